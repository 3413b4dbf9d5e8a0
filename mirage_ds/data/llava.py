"""LLaVA conversation JSON -> shards.

Record shape (LLaVA-Instruct / llava_v1_5_mix665k): ``{id, image, conversations: [{from: human|gpt,
value}]}``. The first human turn holds ``<image>`` (before or after the text, on its own line); the schema
keeps the placeholder out of the text, because the template inserts it. Text-only records (no ``image``,
the ShareGPT part of the mix) have no pixels to shard and are skipped, with a count in the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

from mirage_ds.data.converters import ShardOptions, load_json_list, make_record, record_image, require
from mirage_ds.data.schema import DataError, Record, Role
from mirage_ds.data.writer import Manifest
from mirage_ds.specs.grammar import first_word

log = logging.getLogger(__name__)

SPEAKERS = {"human": "user", "gpt": "assistant"}
IMAGE_TOKEN = re.compile(r"\n?<image>\n?")


def strip_image_token(text: str) -> str:
    """Remove the first ``<image>`` and the newline that joins it to the text."""
    return IMAGE_TOKEN.sub("", text, count=1).strip()


def llava_samples(
    json_path: Path, images_dir: Path | None = None, role: Role = "sft", placeholder_size: int = 32
) -> Iterator[tuple[Record, bytes]]:
    json_path = Path(json_path)
    skipped = 0
    for index, entry in enumerate(load_json_list(json_path)):
        where = f"{json_path}: record {index}"
        record_id = str(require(entry, "id", where, (str, int)))
        where = f"{json_path}: record {index} (id {record_id!r})"
        if entry.get("image") is None:
            skipped += 1
            continue
        image_path = require(entry, "image", where)
        conversation = require(entry, "conversations", where, list)
        turns = []
        for position, message in enumerate(conversation):
            turn_where = f"{where}: conversations[{position}]"
            speaker = require(message, "from", turn_where)
            if speaker not in SPEAKERS:
                raise DataError(f"{turn_where}: field 'from' is {speaker!r}, expected one of {sorted(SPEAKERS)}")
            text = require(message, "value", turn_where)
            turns.append({"role": SPEAKERS[speaker], "text": strip_image_token(text) if position == 0 else text})
        image, placeholder = record_image(images_dir, image_path, where, placeholder_size)
        record = make_record(
            where,
            id=f"llava/{record_id}",
            turns=turns,
            role=role,
            source="llava",
            image_placeholder=placeholder,
            meta={"llava_id": record_id, "image": image_path, "index": index, "first_word": first_word(turns[0]["text"]) if turns else ""},
        )
        yield record, image
    if skipped:
        log.info("%s: skipped %d text-only records (no image)", json_path, skipped)


def convert_llava(
    json_path: Path,
    out_dir: Path,
    *,
    images_dir: Path | None = None,
    role: Role = "sft",
    options: ShardOptions = ShardOptions(),
) -> Manifest:
    """Write ``json_path`` as shards; images come from ``images_dir`` (placeholders when it is None)."""
    return options.write(llava_samples(json_path, images_dir, role, options.placeholder_size), out_dir, "llava", json_path)
