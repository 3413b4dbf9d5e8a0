"""(Record, PNG bytes) samples -> a directory of webdataset tar shards plus ``manifest.json``, atomically.

Everything is written into a hidden sibling directory and renamed into place at the end, so a reader
never sees a half-written dataset and a failed build leaves nothing behind. Shards are byte-for-byte
reproducible: members get a fixed mtime, owner and mode.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import webdataset as wds
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mirage_ds import atomic
from mirage_ds.data.schema import IMAGE_EXT, RECORD_EXT, DataError, Record, SampleError, encode_record, sample_key

FORMAT = "mirage-ds/1"
MANIFEST = "manifest.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    samples: int = Field(ge=1)


class Manifest(BaseModel):
    """``manifest.json`` of a shard directory. ``counts`` keys are dotted: ``role.sft``, ``subset.unsafes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["mirage-ds/1"] = FORMAT
    samples: int
    shards: list[ShardInfo]
    counts: dict[str, int]
    created_by: str


def count_breakdown(records: Iterable[Record]) -> dict[str, int]:
    """Dotted counts of the fields a user filters on: role, source, subset, safe, category; and
    ``image.placeholder``, the samples whose image was generated (built without ``--images``), which training
    reports and ``--paper-scale`` refuses (data/corpus.py)."""
    counts: Counter[str] = Counter()
    for record in records:
        counts[f"role.{record.role}"] += 1
        counts[f"source.{record.source}"] += 1
        if record.image_placeholder:
            counts["image.placeholder"] += 1
        if record.subset is not None:
            counts[f"subset.{record.subset}"] += 1
        if record.safe is not None:
            counts[f"safe.{str(record.safe).lower()}"] += 1
        if record.category is not None:
            counts[f"category.{record.category}"] += 1
    return dict(sorted(counts.items()))


@contextmanager
def atomic_dir(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """``mirage_ds.atomic.atomic_dir`` (its docstring states the guarantee), with what a user must act on as a
    ``DataError``: an existing ``out_dir`` without ``overwrite``, or new data that cannot be moved into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} already exists (use overwrite / --overwrite to replace it)")
    filled = False
    try:
        with atomic.atomic_dir(out_dir, overwrite=overwrite) as tmp:
            yield tmp
            filled = True
    except OSError as err:
        if not filled:  # the block's own error, passed on as it is
            raise
        raise DataError(f"{out_dir}: cannot move the new data into place ({err.strerror or err})") from None


def _shard_sizes(head: list[tuple[Record, bytes]], exhausted: bool, shard_size: int, min_shards: int) -> Iterator[int]:
    """Samples per shard: ``shard_size`` each, or an even split when the data would give too few shards."""
    if not exhausted:
        return itertools.repeat(shard_size)
    n = len(head)
    k = max(min(min_shards, n), math.ceil(n / shard_size))
    return iter([n // k + (1 if i < n % k else 0) for i in range(k)])


def _shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def _check_image(record: Record, image: bytes) -> None:
    if not isinstance(image, (bytes, bytearray)) or not image.startswith(PNG_MAGIC):
        raise SampleError(f"sample {record.id!r}: image is not PNG bytes (use mirage_ds.data.images to encode it)")


def write_shards(
    samples: Iterable[tuple[Record, bytes]],
    out_dir: Path,
    *,
    shard_size: int,
    min_shards: int = 1,
    name: str = "shard",
    overwrite: bool = False,
    created_by: str = "mirage-ds",
) -> Manifest:
    """Write ``out_dir/{name}-{i:06d}.tar`` shards (members ``<key>.png``, ``<key>.json``) and the manifest.

    The streamer splits shards over ranks x workers, so a small dataset is split into at least
    ``min(min_shards, n_samples)`` shards. To know whether it is small, the first
    ``shard_size * min_shards`` samples are buffered in memory; larger datasets stream.
    """
    if shard_size < 1 or min_shards < 1:
        raise DataError(f"shard_size ({shard_size}) and min_shards ({min_shards}) must be >= 1")
    out_dir = Path(out_dir)
    stream = iter(samples)
    head = list(itertools.islice(stream, shard_size * min_shards))
    exhausted = len(head) < shard_size * min_shards
    if not head:
        raise DataError(f"{out_dir}: no samples to write")
    sizes = _shard_sizes(head, exhausted, shard_size, min_shards)
    shard_counts: list[int] = []  # samples written to each shard so far
    counts: Counter[str] = Counter()
    ids_by_key: dict[str, str] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writer: wds.TarWriter | None = None
        target = 0
        try:
            for record, image in itertools.chain(head, stream):
                key = sample_key(record.id)
                if key in ids_by_key:
                    first = ids_by_key[key]
                    raise DataError(f"{out_dir}: duplicate sample key {key!r} for id {record.id!r} (first used by id {first!r})")
                ids_by_key[key] = record.id
                _check_image(record, image)
                if writer is None or shard_counts[-1] == target:
                    if writer is not None:
                        writer.close()
                    target = next(sizes)
                    shard_path = str(tmp / _shard_name(name, len(shard_counts)))
                    writer = wds.TarWriter(shard_path, encoder=False, mtime=0.0, user="mirage", group="mirage")
                    shard_counts.append(0)
                writer.write({"__key__": key, IMAGE_EXT: bytes(image), RECORD_EXT: encode_record(record)})
                shard_counts[-1] += 1
                counts.update(count_breakdown([record]))
        finally:
            if writer is not None:
                writer.close()
        shards = [ShardInfo(name=_shard_name(name, i), samples=n) for i, n in enumerate(shard_counts)]
        manifest = Manifest(samples=len(ids_by_key), shards=shards, counts=dict(sorted(counts.items())), created_by=created_by)
        (tmp / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=1) + "\n")
    return manifest


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of a shard directory; a one-line DataError naming the path if it is missing or invalid."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise DataError(f"shard directory {directory} does not exist")
    if not path.is_file():
        raise DataError(f"{path} not found (build the directory with `mirage-ds data build`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: format {found!r} is not a shard-directory manifest (expected {FORMAT!r})")
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise DataError(f"{path}: field {'.'.join(str(p) for p in first['loc'])!r}: {first['msg']}") from None
