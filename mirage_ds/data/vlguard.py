"""VLGuard JSON (``train.json`` / ``test.json``) -> shards, one sample per (image, instruction) pair.

Record shape (Zong et al., ICML 2024): ``{id, image, safe, [harmful_category, harmful_subcategory],
instr-resp}``. Unsafe images carry one ``{instruction, response}`` (subset ``unsafes``); safe images carry
``{safe_instruction, response}`` (``safe_safes``) then ``{unsafe_instruction, response}``
(``safe_unsafes``). The response, usually a refusal for the unsafe subsets, is the assistant turn.

Record ids are ``vlguard/<file stem>/<index>/<subset>``: VLGuard ids are not unique (train.json holds
``Ads_303871`` twice), so the index keeps the keys apart and ``meta.vlguard_id`` keeps the original.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from mirage_ds.data.converters import ShardOptions, load_json_list, make_record, record_image, require
from mirage_ds.data.schema import DataError, Record, Role, Subset, first_word
from mirage_ds.data.writer import Manifest


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


def vlguard_samples(
    json_path: Path, images_dir: Path | None = None, role: Role = "sft", placeholder_size: int = 32
) -> Iterator[tuple[Record, bytes]]:
    """Samples in file order; each image is read (or generated) once for all its instructions."""
    json_path = Path(json_path)
    for index, entry in enumerate(load_json_list(json_path)):
        where = f"{json_path}: record {index}"
        vlguard_id = require(entry, "id", where)
        where = f"{json_path}: record {index} (id {vlguard_id!r})"
        image_path = require(entry, "image", where)
        safe_image = require(entry, "safe", where, bool)
        pairs = require(entry, "instr-resp", where, list)
        layout = image_layout(safe_image)
        if len(pairs) < len(layout):
            kind = "safe" if safe_image else "unsafe"
            raise DataError(f"{where}: field 'instr-resp' has {len(pairs)} entries, a {kind} image needs {len(layout)}")
        image, placeholder = record_image(images_dir, image_path, where, placeholder_size)
        for field in layout:
            pair_where = f"{where}: instr-resp[{field.position}]"
            instruction = require(pairs[field.position], field.name, pair_where)
            response = require(pairs[field.position], "response", pair_where)
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
    options: ShardOptions = ShardOptions(),
) -> Manifest:
    """Write ``json_path`` as shards; without ``images_dir`` images are placeholders (``image_placeholder``)."""
    return options.write(vlguard_samples(json_path, images_dir, role, options.placeholder_size), out_dir, "vlguard", json_path)
