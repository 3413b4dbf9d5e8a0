"""VLGuard JSON (``train.json`` / ``test.json``) -> shards, one sample per (image, instruction) pair.

Record shape (Zong et al., ICML 2024): ``{id, image, safe, [harmful_category, harmful_subcategory],
instr-resp}``. Unsafe images carry one ``{instruction, response}`` (subset ``unsafes``); safe images carry
``{safe_instruction, response}`` (``safe_safes``) then ``{unsafe_instruction, response}``
(``safe_unsafes``). The response, usually a refusal for the unsafe subsets, is the assistant turn.

A pair is recognised by its instruction field, not its position, so a file split by subset (safe images
that keep only their ``safe_instruction`` pair) converts too; ``subsets`` picks which pairs become samples
(train.json: 1,023 ``unsafes``, 977 ``safe_safes``, 977 ``safe_unsafes``).

Record ids are ``vlguard/<file stem>/<index>/<subset>``: VLGuard ids are not unique (train.json holds
``Ads_303871`` twice), so the index keeps the keys apart and ``meta.vlguard_id`` keeps the original.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, get_args

from mirage_ds.data.converters import ShardOptions, load_json_list, make_record, record_image, require
from mirage_ds.data.schema import DataError, Record, Role, Subset
from mirage_ds.data.topup import TopUp, top_up
from mirage_ds.data.writer import Manifest
from mirage_ds.specs.grammar import first_word

SUBSETS: tuple[Subset, ...] = get_args(Subset)


class InstructionField(NamedTuple):
    """One instruction field of VLGuard's ``instr-resp`` pairs and the query it holds."""

    name: str  # key inside an instr-resp pair
    subset: Subset  # VLGuard evaluation subset of the query
    safe: bool  # whether the query itself is safe
    safe_image: bool  # whether the records that carry it have a safe image
    position: int  # index of its pair in a train/test record's instr-resp


# The one table from VLGuard fields to subsets. Unsafe images carry ``instruction`` alone; safe images
# carry ``safe_instruction`` then ``unsafe_instruction``. The K-shot files keep the record shape.
INSTRUCTION_FIELDS: tuple[InstructionField, ...] = (
    InstructionField("instruction", "unsafes", safe=False, safe_image=False, position=0),
    InstructionField("safe_instruction", "safe_safes", safe=True, safe_image=True, position=0),
    InstructionField("unsafe_instruction", "safe_unsafes", safe=False, safe_image=True, position=1),
)


def image_layout(safe_image: bool) -> tuple[InstructionField, ...]:
    """The instr-resp fields of a record whose image is safe (or not), in pair order."""
    return tuple(f for f in INSTRUCTION_FIELDS if f.safe_image == safe_image)


def subsets_named(names: Iterable[str]) -> tuple[Subset, ...]:
    """The subsets ``names`` lists, in table order (all three when empty); DataError naming an unknown one."""
    names = list(names)
    for name in names:
        if name not in SUBSETS:
            raise DataError(f"unknown VLGuard subset {name!r} (known: {', '.join(SUBSETS)})")
    return tuple(s for s in SUBSETS if s in names) if names else SUBSETS


def _pair_field(pair: Any, safe_image: bool, where: str) -> InstructionField:
    """The field of ``pair``'s instruction among those an image of its kind carries."""
    layout = image_layout(safe_image)
    found = [f for f in layout if isinstance(pair, dict) and f.name in pair]
    if len(found) != 1:
        kind = "a safe" if safe_image else "an unsafe"
        names = ", ".join(f.name for f in layout)
        raise DataError(f"{where} has {'none' if not found else 'more than one'} of the fields {names} ({kind} image)")
    return found[0]


def vlguard_samples(
    json_path: Path, images_dir: Path | None = None, role: Role = "sft", placeholder_size: int = 32,
    subsets: Iterable[Subset] = SUBSETS,
) -> Iterator[tuple[Record, bytes]]:
    """Samples of ``subsets`` in file order; each image is read (or generated) once for all its instructions,
    and only when one of them is kept."""
    json_path, wanted = Path(json_path), set(subsets)
    for index, entry in enumerate(load_json_list(json_path)):
        where = f"{json_path}: record {index}"
        vlguard_id = require(entry, "id", where)
        where = f"{json_path}: record {index} (id {vlguard_id!r})"
        image_path = require(entry, "image", where)
        safe_image = require(entry, "safe", where, bool)
        pairs = require(entry, "instr-resp", where, list)
        if not pairs:
            raise DataError(f"{where}: field 'instr-resp' is empty")
        fields = [_pair_field(pair, safe_image, f"{where}: instr-resp[{i}]") for i, pair in enumerate(pairs)]
        kept = [(i, field) for i, field in enumerate(fields) if field.subset in wanted]
        if not kept:
            continue
        image, placeholder = record_image(images_dir, image_path, where, placeholder_size)
        for position, field in kept:
            pair_where = f"{where}: instr-resp[{position}]"
            instruction = require(pairs[position], field.name, pair_where)
            response = require(pairs[position], "response", pair_where)
            record = make_record(
                where,
                id=f"vlguard/{json_path.stem}/{index:05d}/{field.subset}",
                turns=[{"role": "user", "text": instruction}, {"role": "assistant", "text": response}],
                role=role,
                source="vlguard",
                subset=field.subset,
                safe=field.safe,
                category=None if safe_image else entry.get("harmful_category"),
                subcategory=None if safe_image else entry.get("harmful_subcategory"),
                image_placeholder=placeholder,
                meta={"vlguard_id": vlguard_id, "image": image_path, "index": index, "first_word": first_word(instruction)},
            )
            yield record, image


def convert_vlguard(
    json_path: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    role: Role = "sft",
    subsets: Iterable[Subset] = SUBSETS,
    top_up_from: TopUp | None = None,
    options: ShardOptions = ShardOptions(),
) -> Manifest:
    """Write the ``subsets`` pairs of ``json_path`` as shards with role ``role``, topped up to
    ``top_up_from.to`` samples when given; without ``images_dir`` images are placeholders
    (``image_placeholder``)."""
    samples = vlguard_samples(json_path, images_dir, role, options.placeholder_size, subsets)
    if top_up_from is not None:
        samples = top_up(samples, top_up_from, role)
    return options.write(samples, out_dir, "vlguard", json_path)
