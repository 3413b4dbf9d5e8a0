"""What every converter shares: shard options, JSON loading, required fields and image resolution (an image
path from a dataset file stays under the images root: ``images.image_under``).

The converters themselves live in ``vlguard.py``, ``llava.py`` and ``spavl.py``; each turns one source
format into (Record, PNG bytes) samples and hands them to ``writer.write_shards``. Every error is one line
naming the file, the record (index and id) and the field or path at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mirage_ds.data.images import image_under, load_image_bytes, placeholder_png
from mirage_ds.data.schema import DataError, Record, SampleError
from mirage_ds.data.writer import Manifest, write_shards


@dataclass(frozen=True)
class ShardOptions:
    """How a converter writes its output (see ``writer.write_shards``)."""

    shard_size: int = 256
    min_shards: int = 8  # the default training layouts split shards over up to 8 ranks x workers
    overwrite: bool = False
    placeholder_size: int = 32  # side of generated images when the real ones are not given

    def write(self, samples: Iterable[tuple[Record, bytes]], out_dir: Path, source: str, input_path: Path) -> Manifest:
        """``write_shards`` with these options; the manifest records the command that built it."""
        return write_shards(samples, out_dir, shard_size=self.shard_size, min_shards=self.min_shards,
                            overwrite=self.overwrite, created_by=f"mirage-ds data build {source} {Path(input_path).name}")


def load_json_list(path: Path) -> list[Any]:
    """The JSON list of records in ``path``; DataError naming the file when it is missing or not a list."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def require(entry: Any, field: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """``entry[field]``, which must be present, not null and of ``kind``; DataError naming ``where`` otherwise."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, found {type(entry).__name__}")
    if entry.get(field) is None:
        raise DataError(f"{where}: missing field {field!r}")
    value = entry[field]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {field!r} has type {type(value).__name__}")
    return value


def record_image(images_dir: Path | None, relative: str, where: str, placeholder_size: int) -> tuple[bytes, bool]:
    """(PNG bytes, is_placeholder): the file ``images_dir/relative`` (which must stay under ``images_dir``), or a
    placeholder seeded from ``relative``.

    Seeding from the image path (not the record id) gives records that share an image the same pixels.
    """
    if images_dir is None:
        return placeholder_png(relative, placeholder_size), True
    path = image_under(images_dir, relative, where)
    try:
        return load_image_bytes(path), False
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


def make_record(where: str, **fields: Any) -> Record:
    """A validated Record; a schema violation becomes a one-line SampleError naming ``where``."""
    try:
        return Record(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise SampleError(f"{where}: field {loc!r}: {first['msg']}") from None
