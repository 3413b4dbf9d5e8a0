"""What an evaluation asks, per VLGuard subset: the originals (before) and the attacked shots (after).

Two sources, never pooled across subsets:

- ``paper_cases``: the paper's four cases from a VLGuard directory (docs/paper-protocol.md, section 4).
  ``unsafes``: ASR before on ``test.json`` (442) and after on ``test_what_3shot.json`` (442 x 3, per shot
  and any-of-3); ``safe_safes``: RR before on ``test.json`` (558) and after on ``test_share_1shot.json``
  (556); ``safe_unsafes`` (safe image, unsafe instruction): ASR before only, its own row.
- ``rule_cases``: shard records (the synthetic corpus, or converted data without K-shot files), attacked
  with the rule-based one-word rewriter: "What" shots for unsafe queries, "Share" shots for safe ones.

Images resolve as ``<images dir>/<record's image path>``; a missing one is a one-line error naming the
record and the path, unless placeholders were asked for (then each is counted, and the CLI warns).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mirage_ds.data.images import image_under, load_image_bytes, placeholder_png
from mirage_ds.data.schema import DataError, Record
from mirage_ds.data.vlguard import INSTRUCTION_FIELDS, vlguard_samples
from mirage_ds.eval.attacks.kshot import load_kshot
from mirage_ds.eval.attacks.query import attack_queries
from mirage_ds.specs.rewrite import OneWordRewriter

Metric = Literal["asr", "rr"]
# The paper's attack files, in the VLGuard directory beside test.json.
KSHOT_FILES = ("test_what_3shot.json", "test_share_1shot.json")
SUBSET_METRIC: dict[str, Metric] = {f.subset: ("rr" if f.safe else "asr") for f in INSTRUCTION_FIELDS}


@dataclass(frozen=True)
class Asked:
    """One generation request and what judging its answer needs; ``question`` is what the model is asked
    and what the judge judges the answer against."""

    key: str
    question: str
    image: bytes
    record: Record | None = None
    placeholder: bool = False


@dataclass(frozen=True)
class AttackGroup:
    """The K shots of one attacked query; ``original``: index of the same query in the case's ``before``
    (the shortcut pair), None when the original is not there."""

    query_id: str
    shots: list[Asked]
    original: int | None


@dataclass
class SubsetCase:
    """One subset's row: ``before`` originals and ``after`` attack groups (empty when not attacked)."""

    subset: str
    metric: Metric
    before: list[Asked] = field(default_factory=list)
    after: list[AttackGroup] = field(default_factory=list)
    source: str = ""

    def attacked(self) -> list[Asked]:
        """Every shot of every attack group, in order."""
        return [a for group in self.after for a in group.shots]

    def asked(self) -> list[Asked]:
        return self.before + self.attacked()

    @property
    def shots(self) -> int:
        return len(self.after[0].shots) if self.after else 0


class ImageSource:
    """Images by VLGuard path (``<source>/<file>``) under ``root``, read once each; a path that leaves ``root``
    (absolute elsewhere, or ``..``) is a DataError.

    ``placeholders``: a missing image (or every image, with no ``root``) becomes a seeded placeholder, and
    its path is kept in ``placeholder_paths``; otherwise a missing image raises DataError naming ``where``.
    """

    def __init__(self, root: Path | None, placeholders: bool = False, size: int = 32) -> None:
        if root is None and not placeholders:
            raise DataError("no images directory: pass --images DIR (VLGuard's image folders), or "
                            "--placeholder-images to evaluate on generated placeholders")
        if root is not None and not Path(root).is_dir():
            raise DataError(f"images directory {root} does not exist")
        self.root, self.placeholders, self.size = root, placeholders, size
        self.placeholder_paths: set[str] = set()
        self._cache: dict[str, bytes] = {}

    def get(self, relative: str, where: str) -> tuple[bytes, bool]:
        """(PNG bytes, is_placeholder) of ``relative``; ``where`` names the record asking for it."""
        if relative not in self._cache:
            path = None if self.root is None else image_under(self.root, relative, where)
            if path is not None and path.is_file():
                self._cache[relative] = load_image_bytes(path)
            elif self.placeholders:
                self._cache[relative] = placeholder_png(relative, self.size)
                self.placeholder_paths.add(relative)
            else:
                raise DataError(f"{where}: image {path} not found (pass --placeholder-images to use placeholders)")
        return self._cache[relative], relative in self.placeholder_paths


def paper_cases(vlguard_dir: Path, images: ImageSource, limit: int | None = None) -> list[SubsetCase]:
    """The four cases (plus the ``safe_unsafes`` row) from ``vlguard_dir``; ``limit``: the first N originals
    and the first N attacked queries of each subset."""
    test = Path(vlguard_dir) / "test.json"
    cases = {f.subset: SubsetCase(f.subset, SUBSET_METRIC[f.subset], source=test.name) for f in INSTRUCTION_FIELDS}
    by_id: dict[tuple[str, str], int | None] = {}
    for record, _ in vlguard_samples(test):
        case = cases[record.subset]
        if limit is not None and len(case.before) >= limit:
            continue
        where = f"{test}: record {record.meta['index']} (id {record.meta['vlguard_id']!r})"
        image, placeholder = images.get(record.meta["image"], where)
        pair = (record.meta["vlguard_id"], case.subset)
        # VLGuard ids are not unique: an id seen twice pairs with no original.
        by_id[pair] = None if pair in by_id else len(case.before)
        case.before.append(Asked(f"{case.subset}/before/{len(case.before)}", record.question, image, record, placeholder))
    for name in KSHOT_FILES:
        path = Path(vlguard_dir) / name
        if not path.is_file():
            continue
        for query in load_kshot(path, originals=test):
            case = cases[query.subset]
            if limit is not None and len(case.after) >= limit:
                continue
            image, placeholder = images.get(query.image, f"{path}: id {query.id!r}")
            j = len(case.after)
            shots = [Asked(f"{case.subset}/after/{j}/{k}", text, image, None, placeholder) for k, text in enumerate(query.shots)]
            case.after.append(AttackGroup(query.id, shots, by_id.get((query.id, case.subset))))
            case.source = f"{test.name} + {name}"
    return list(cases.values())


def rule_cases(samples: Iterable[tuple[Record, bytes]], shots: int, attack_word: str, modify_word: str,
               seed: int = 0, limit: int | None = None) -> list[SubsetCase]:
    """Rule-based K-shot cases from shard samples: each subset's originals, each attacked with ``shots``
    rewrites to ``attack_word`` (unsafe queries) or ``modify_word`` (safe ones). A record without a subset
    goes to the row of its label ("unsafe" / "safe"); unlabelled records are not attacked. ``limit``: the
    first N queries of each row."""
    labelled = [(r, png) for r, png in samples if r.safe is not None]
    rows: dict[str, list[tuple[Record, bytes]]] = {}
    for record, png in labelled:
        row = rows.setdefault(record.subset or ("safe" if record.safe else "unsafe"), [])
        if limit is None or len(row) < limit:
            row.append((record, png))
    order = [f.subset for f in INSTRUCTION_FIELDS]  # VLGuard's rows first, in the paper's order
    cases = []
    for name in sorted(rows, key=lambda n: order.index(n) if n in order else len(order)):
        members = rows[name]
        safe = members[0][0].safe
        rewriter = OneWordRewriter(modify_word if safe else attack_word, seed)
        queries = attack_queries((r for r, _ in members), rewriter, shots)
        case = SubsetCase(name, "rr" if safe else "asr", source=f"rule-based ({rewriter.target})")
        for i, ((record, png), query) in enumerate(zip(members, queries)):
            case.before.append(Asked(f"{name}/before/{i}", record.question, png, record, record.image_placeholder))
            group = [Asked(f"{name}/after/{i}/{k}", text, png, record, record.image_placeholder)
                     for k, text in enumerate(query.shots)]
            case.after.append(AttackGroup(record.id, group, i))
        cases.append(case)
    return cases
