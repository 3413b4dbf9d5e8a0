"""Loading the paper's K-shot attack files: VLGuard-shaped records, one per shot, grouped by query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mirage_ds.data.converters import load_json_list, require
from mirage_ds.data.schema import DataError, Subset
from mirage_ds.data.vlguard import INSTRUCTION_FIELDS
from mirage_ds.eval.attacks.query import AttackQuery

# A K-shot record keeps VLGuard's shape with the attacked query in its first instr-resp pair, so the
# fields that can open a record (position 0) say which subset the query belongs to.
_LEADING_FIELDS = tuple(f for f in INSTRUCTION_FIELDS if f.position == 0)


def _kshot_instruction(entry: dict[str, Any], where: str) -> tuple[str, Subset, bool]:
    pairs = require(entry, "instr-resp", where, list)
    if not pairs:
        raise DataError(f"{where}: field 'instr-resp' is empty")
    for field in _LEADING_FIELDS:
        if isinstance(pairs[0], dict) and field.name in pairs[0]:
            return require(pairs[0], field.name, f"{where}: instr-resp[0]"), field.subset, field.safe
    names = ", ".join(f.name for f in _LEADING_FIELDS)
    raise DataError(f"{where}: instr-resp[0] has none of the fields {names}")


def _originals(path: Path) -> dict[str, dict[Subset, str | None]]:
    """id -> subset -> original instruction from a VLGuard JSON; None marks an id that is not unique."""
    table: dict[str, dict[Subset, str | None]] = {}
    for index, entry in enumerate(load_json_list(path)):
        where = f"{path}: record {index}"
        rid = require(entry, "id", where)
        found: dict[Subset, str | None] = {}
        for pair in require(entry, "instr-resp", where, list):
            for field in INSTRUCTION_FIELDS:
                if isinstance(pair, dict) and field.name in pair:
                    found[field.subset] = pair[field.name]
        if rid in table:
            found = {subset: None for subset in {*found, *table[rid]}}
        table[rid] = found
    return table


def load_kshot(
    path: str | Path, *, shots: int | None = None, originals: str | Path | None = None
) -> list[AttackQuery]:
    """The paper's K-shot file (``test_what_3shot.json``, ``test_share_1shot.json``) as grouped queries.

    The records of one query are consecutive and share ``id``; groups are taken as they stand and never
    re-sampled. ``shots`` is the expected group size (default: the first group's). ``originals`` (e.g.
    ``test.json``) fills ``AttackQuery.original`` by id. Errors name the file and the record index.
    """
    path = Path(path)
    data = load_json_list(path)
    if not data:
        raise DataError(f"{path}: holds no records")
    groups: list[tuple[int, list[dict[str, Any]]]] = []
    started: dict[str, int] = {}
    for index, entry in enumerate(data):
        rid = require(entry, "id", f"{path}: record {index}")
        if groups and groups[-1][1][0]["id"] == rid:
            groups[-1][1].append(entry)
            continue
        if rid in started:
            raise DataError(
                f"{path}: record {index}: id {rid!r} reappears after other ids (its group began at record "
                f"{started[rid]}); the records of one query must be consecutive"
            )
        started[rid] = index
        groups.append((index, [entry]))
    size = shots if shots is not None else len(groups[0][1])
    reference = _originals(Path(originals)) if originals is not None else None
    queries: list[AttackQuery] = []
    for start, members in groups:
        rid = members[0]["id"]
        where = f"{path}: record {start} (id {rid!r})"
        if len(members) != size:
            raise DataError(
                f"{where}: a group of {len(members)} consecutive records, expected {size} shots per query"
            )
        texts, subsets = [], set()
        for offset, entry in enumerate(members):
            text, subset, safe = _kshot_instruction(entry, f"{path}: record {start + offset} (id {rid!r})")
            texts.append(text)
            subsets.add((subset, safe, entry.get("image"), entry.get("harmful_category")))
        if len(subsets) != 1:
            raise DataError(f"{where}: the records of one query disagree on subset, image or category")
        subset, safe, _, category = subsets.pop()
        original = None
        if reference is not None:
            if rid not in reference or subset not in reference[rid]:
                raise DataError(f"{where}: no {subset} instruction with this id in {originals}")
            original = reference[rid][subset]
            if original is None:
                raise DataError(f"{where}: id is not unique in {originals}; cannot tell which original it is")
        queries.append(
            AttackQuery(
                id=rid,
                image=require(members[0], "image", where),
                original=original,
                shots=texts,
                safe=safe,
                subset=subset,
                category=category,
                subcategory=members[0].get("harmful_subcategory"),
            )
        )
    return queries
