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

from mirage_ds.data.converters import ShardOptions, first_word, load_json_list, make_record, record_image, require
from mirage_ds.data.schema import DataError, Record, Role, Subset
from mirage_ds.data.writer import Manifest

# subset -> (position in instr-resp, instruction field, whether the query is safe)
UNSAFE_IMAGE_PAIRS: tuple[tuple[Subset, int, str, bool], ...] = (("unsafes", 0, "instruction", False),)
SAFE_IMAGE_PAIRS: tuple[tuple[Subset, int, str, bool], ...] = (
    ("safe_safes", 0, "safe_instruction", True),
    ("safe_unsafes", 1, "unsafe_instruction", False),
)


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
        layout = SAFE_IMAGE_PAIRS if safe_image else UNSAFE_IMAGE_PAIRS
        if len(pairs) < len(layout):
            kind = "safe" if safe_image else "unsafe"
            raise DataError(f"{where}: field 'instr-resp' has {len(pairs)} entries, a {kind} image needs {len(layout)}")
        image, placeholder = record_image(images_dir, image_path, where, placeholder_size)
        for subset, position, field, safe_query in layout:
            pair_where = f"{where}: instr-resp[{position}]"
            instruction = require(pairs[position], field, pair_where)
            response = require(pairs[position], "response", pair_where)
            record = make_record(
                where,
                id=f"vlguard/{json_path.stem}/{index:05d}/{subset}",
                turns=[{"role": "user", "text": instruction}, {"role": "assistant", "text": response}],
                role=role,
                source="vlguard",
                subset=subset,
                safe=safe_query,
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
