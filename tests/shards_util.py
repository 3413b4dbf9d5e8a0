"""Small real shard sets for tests, written with the project's own writer."""

from __future__ import annotations

from pathlib import Path

from mirage_ds.data.images import placeholder_png
from mirage_ds.data.schema import Record, Turn
from mirage_ds.data.writer import write_shards


def qa_records(n: int, prefix: str = "s") -> list[tuple[Record, bytes]]:
    out = []
    for i in range(n):
        record = Record(
            id=f"{prefix}-{i:04d}",
            turns=[Turn(role="user", text=f"What is item {i}?"), Turn(role="assistant", text=f"It is item {i}.")],
            role="sft",
            source="synthetic",
        )
        out.append((record, placeholder_png(record.id, 32)))
    return out


def make_shards(out_dir: Path, n: int, shards: int, prefix: str = "s") -> Path:
    write_shards(qa_records(n, prefix), out_dir, shard_size=-(-n // shards), min_shards=shards)
    return out_dir
