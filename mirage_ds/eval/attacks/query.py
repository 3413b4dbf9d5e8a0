"""An attack set: one query with its K shots, and the rule-based set built from schema records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mirage_ds.data.schema import DataError, Record, Subset
from mirage_ds.specs.rewrite import OneWordRewriter


@dataclass(frozen=True)
class AttackQuery:
    """One query and its K shots. ``image``: VLGuard's ``<source>/<file>`` path, or a shard record id."""

    id: str
    image: str
    original: str | None
    shots: list[str]
    safe: bool
    subset: Subset | None = None
    category: str | None = None
    subcategory: str | None = None
    rules: list[str] = field(default_factory=list)  # per shot; empty for shots loaded from a file


def attack_queries(
    records: Iterable[Record], rewriter: OneWordRewriter, shots: int, *, safe: bool | None = None
) -> list[AttackQuery]:
    """Rule-based K-shot queries from schema records (e.g. a shard directory); ``safe`` filters by label."""
    out: list[AttackQuery] = []
    for record in records:
        if safe is not None and record.safe is not safe:
            continue
        if record.safe is None:
            raise DataError(f"record {record.id!r} has no safe label; an attack set needs one")
        chosen = rewriter.rewrite(record.question, shots)
        out.append(
            AttackQuery(
                id=record.id,
                image=record.id,
                original=record.question,
                shots=[r.text for r in chosen],
                safe=record.safe,
                subset=record.subset,
                category=record.category,
                subcategory=record.subcategory,
                rules=[r.rule for r in chosen],
            )
        )
    return out
