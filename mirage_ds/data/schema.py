"""The one sample schema every shard in the project follows.

A webdataset sample is a group of tar members sharing a key: ``<key>.png`` (the image, PNG bytes) and
``<key>.json`` (the record below). Converters write it, the streamer reads it, the evaluation suite reads
it; nothing else defines what a sample is.

Record fields (JSON):

- ``id`` (str): unique within the dataset; also the webdataset key (``/`` and ``.`` replaced by ``_``).
- ``turns`` (list): alternating ``{"role": "user"|"assistant", "text": str}``, starting with ``user``.
  The first user turn refers to the image; the template inserts the ``<image>`` placeholder itself,
  so ``text`` never contains it.
- ``role`` (str): ``sft`` (supervised), ``forget`` (unlearning target) or ``retain`` (keep utility).
- ``source`` (str): ``synthetic`` | ``vlguard`` | ``llava`` | ``spavl`` | ``easyvqa``.
- ``subset`` (str | None): VLGuard's evaluation subset: ``unsafes`` | ``safe_safes`` | ``safe_unsafes``.
- ``safe`` (bool | None): whether the *query* is safe (the label a refusal should track).
- ``category`` / ``subcategory`` (str | None): harm category, as the source names it.
- ``payload`` (str | None): synthetic corpus only: the marker string a harmful answer contains.
- ``answers`` (list[str] | None): reference answers for utility evaluation (VQA: the human answers).
- ``image_placeholder`` (bool): the image was generated because the real one was not given.
- ``meta`` (dict): anything else a converter keeps (original ids, rewrite rule, ...); ``meta.first_word``
  is ``specs.grammar.first_word(question)``, the normalisation the shortcut table and the rewriter use.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Role = Literal["sft", "forget", "retain"]
Source = Literal["synthetic", "vlguard", "llava", "spavl", "easyvqa"]
Subset = Literal["unsafes", "safe_safes", "safe_unsafes"]

# The member names of a sample, ``<key>.<ext>``: every writer and reader takes them from here.
IMAGE_EXT = "png"
RECORD_EXT = "json"


class Turn(BaseModel):
    """One conversation turn; the template adds the image placeholder and role markers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["user", "assistant"]
    text: str


class Record(BaseModel):
    """One sample's JSON member. See the module docstring for the meaning of each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    turns: list[Turn] = Field(min_length=1)
    role: Role
    source: Source
    subset: Subset | None = None
    safe: bool | None = None
    category: str | None = None
    subcategory: str | None = None
    payload: str | None = None
    answers: list[str] | None = None
    image_placeholder: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("turns")
    @classmethod
    def _alternating(cls, turns: list[Turn]) -> list[Turn]:
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(f"turn {i} has role {turn.role!r}, expected {expected!r} (turns alternate user/assistant)")
        return turns

    @property
    def question(self) -> str:
        return self.turns[0].text

    @property
    def answer(self) -> str | None:
        return self.turns[1].text if len(self.turns) > 1 else None


class DataError(ValueError):
    """A dataset-level problem (missing directory, manifest or shards); the message names the path."""


class SampleError(ValueError):
    """A sample that cannot be used; the message names the shard, the key and what was expected."""


def sample_key(record_id: str) -> str:
    """webdataset splits keys at the first dot and treats ``/`` as a path: keep keys flat."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", record_id)


def encode_record(record: Record) -> bytes:
    """The JSON member of a sample (UTF-8, non-ASCII kept as is)."""
    return json.dumps(record.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")


def decode_record(raw: bytes, where: str) -> Record:
    """Parse and validate a JSON member; ``where`` (``shard.tar:key``) goes into the error."""
    try:
        return Record.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise SampleError(f"{where}: field {loc!r}: {first['msg']}") from None
