"""SPA-VL-style preference rows (``image, question, chosen, rejected``) -> shards, two samples per row.

``chosen`` (the safe answer) becomes a ``retain`` sample (or ``sft``, by option) and ``rejected`` (the
harmful answer) a ``forget`` sample: the pairing an unlearning method needs. Rows are read with
``datasets`` from parquet or JSON / JSON lines. The image column may hold a path under ``images_dir``
(relative, or absolute inside it: ``images.image_under``), raw bytes, a ``datasets.Image`` value
(``{bytes, path}``) or a PIL image. SPA-VL's ``class1`` / ``class2`` columns, when present, become
``category`` / ``subcategory``.

SPA-VL's test splits (``harm``, ``help``; 265 rows each) hold ``image, question, class1, class2, class3``
and no answers: ``eval_queries`` reads them for evaluation (``eval/spavl.py``), from the hub layout
(``test/harm-00000-of-00001.parquet``) or from ``harm.parquet`` / ``harm.json`` / ``harm.jsonl``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from mirage_ds.data.converters import ShardOptions, make_record, record_image
from mirage_ds.data.images import encode_png, image_under, load_image_bytes, png_from_bytes
from mirage_ds.data.schema import DataError, Record, Role
from mirage_ds.data.writer import Manifest
from mirage_ds.specs.grammar import first_word

COLUMNS = ("image", "question", "chosen", "rejected")
EVAL_SPLITS = ("harm", "help")
EVAL_COLUMNS = ("image", "question")
FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def read_rows(path: Path, columns: Sequence[str] = COLUMNS) -> Any:
    """The rows as an in-memory ``datasets.Dataset`` with images left undecoded ({bytes, path} dicts);
    each of ``columns`` must be there."""
    import datasets  # imported here: it takes ~1 s and only this converter needs it

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected one of {sorted(FORMATS)})")
    # A private cache dir: datasets would otherwise leave Arrow copies in ~/.cache/huggingface.
    with tempfile.TemporaryDirectory(prefix="mirage-spavl-") as cache:
        try:
            reader = datasets.Dataset.from_parquet if FORMATS[path.suffix] == "parquet" else datasets.Dataset.from_json
            rows = reader(str(path), cache_dir=cache, keep_in_memory=True)
        except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as err:
            raise DataError(f"{path}: cannot read rows ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (columns: {rows.column_names})")
    if isinstance(rows.features["image"], datasets.Image):
        rows = rows.cast_column("image", datasets.Image(decode=False))
    return rows


def row_image(value: Any, images_dir: Path | None, where: str, placeholder_size: int) -> tuple[bytes, bool, str | None]:
    """(PNG bytes, is_placeholder, source path if any) for one image cell."""
    if isinstance(value, dict) and value.get("bytes"):
        return png_from_bytes(value["bytes"], where), False, value.get("path")
    if isinstance(value, dict) and value.get("path"):
        # A datasets.Image without embedded bytes points at a file, usually by absolute path: it must lie under
        # the images root, so one is needed (a placeholder would hide that the real image was asked for).
        if images_dir is None:
            raise DataError(f"{where}: image {value['path']!r} is a file path: give the images root it lies under (--images DIR)")
        path = image_under(images_dir, value["path"], where)
        try:
            return load_image_bytes(path), False, value["path"]
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
    if isinstance(value, (bytes, bytearray)):
        return png_from_bytes(bytes(value), where), False, None
    if isinstance(value, PILImage.Image):
        return encode_png(value), False, None
    if isinstance(value, str) and value:
        image, placeholder = record_image(images_dir, value, where, placeholder_size)
        return image, placeholder, value
    raise DataError(f"{where}: column 'image' holds {type(value).__name__}, expected a path, bytes or an image")


def spavl_samples(
    data_path: Path, images_dir: Path | None = None, chosen_role: Role = "retain", placeholder_size: int = 32
) -> Iterator[tuple[Record, bytes]]:
    data_path = Path(data_path)
    for index, row in enumerate(read_rows(data_path)):
        where = f"{data_path}: row {index}"
        for column in COLUMNS:
            if row[column] is None or row[column] == "":
                raise DataError(f"{where}: missing field {column!r}")
        for column in COLUMNS[1:]:
            if not isinstance(row[column], str):
                raise DataError(f"{where}: field {column!r} has type {type(row[column]).__name__}")
        image, placeholder, image_path = row_image(row["image"], images_dir, where, placeholder_size)
        for kind, role in (("chosen", chosen_role), ("rejected", "forget")):
            record = make_record(
                where,
                id=f"spavl/{data_path.stem}/{index:06d}/{kind}",
                turns=[{"role": "user", "text": row["question"]}, {"role": "assistant", "text": row[kind]}],
                role=role,
                source="spavl",
                category=row.get("class1"),
                subcategory=row.get("class2"),
                image_placeholder=placeholder,
                meta={"index": index, "response": kind, "image": image_path, "first_word": first_word(row["question"])},
            )
            yield record, image


def convert_spavl(
    data_path: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    chosen_role: Role = "retain",
    options: ShardOptions = ShardOptions(),
) -> Manifest:
    """Write the rows of ``data_path`` as shards: ``chosen`` -> ``chosen_role``, ``rejected`` -> forget."""
    if chosen_role == "forget":
        raise DataError("chosen_role must be 'retain' or 'sft': the chosen answer is the one to keep")
    return options.write(spavl_samples(data_path, images_dir, chosen_role, options.placeholder_size), out_dir, "spavl", data_path)


@dataclass(frozen=True)
class EvalQuery:
    """One row of a SPA-VL test split: the question, its image (PNG bytes) and SPA-VL's three class levels."""

    index: int
    question: str
    image: bytes
    classes: tuple[str | None, str | None, str | None]
    source: str


def eval_split_files(data_dir: Path, split: str) -> list[Path]:
    """The files of test split ``split`` under ``data_dir`` (SPA-VL's root, or its ``test/`` directory)."""
    if split not in EVAL_SPLITS:
        raise DataError(f"unknown SPA-VL test split {split!r} (expected one of {EVAL_SPLITS})")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"SPA-VL directory {data_dir} does not exist")
    for folder in (data_dir / "test", data_dir):
        shards = sorted(folder.glob(f"{split}-*.parquet"))
        whole = [folder / f"{split}{suffix}" for suffix in FORMATS if (folder / f"{split}{suffix}").is_file()]
        if shards or whole:
            return shards or whole[:1]
    raise DataError(f"no SPA-VL {split!r} split under {data_dir}: looked for test/{split}-*.parquet, "
                    f"{split}-*.parquet and {split}.parquet/.json/.jsonl (in {data_dir} and {data_dir / 'test'})")


def eval_queries(data_dir: Path, split: str, images_dir: Path | None = None) -> Iterator[EvalQuery]:
    """The rows of test split ``split``, in file order. An image given as a path is read from ``images_dir``
    (default: the directory of the file that names it); a missing image is an error, never a placeholder."""
    index = 0
    for path in eval_split_files(data_dir, split):
        for row in read_rows(path, EVAL_COLUMNS):
            where = f"{path}: row {index}"
            if not isinstance(row["question"], str) or not row["question"].strip():
                raise DataError(f"{where}: field 'question' is missing or not text")
            if row["image"] is None or row["image"] == "":
                raise DataError(f"{where}: missing field 'image'")
            # An images directory is always given here, so a path never falls back to a placeholder.
            image, _, _ = row_image(row["image"], images_dir or path.parent, where, placeholder_size=0)
            classes = (row.get("class1"), row.get("class2"), row.get("class3"))
            yield EvalQuery(index, row["question"], image, classes, path.name)
            index += 1
