"""The synthetic corpus's spec, torch-free: recipes carry it as ``data.synthetic`` and validate without torch.

``data/synthetic.py`` builds the corpus from it; ``models/pretrained.py`` keys the embedded base on it.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# The corpus's format: part of the cache key, so a corpus built by older code is never reused.
SYNTHETIC_FORMAT = "mirage-ds-synthetic/8"


class SyntheticSpec(BaseModel):
    """Sizes, seed and planted shortcut rates of the synthetic corpus (defaults build in ~2 s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0
    image_size: int = Field(32, ge=8, le=512)
    n_safe_images: int = Field(128, ge=1)  # train: one safe_safes + one safe_unsafes query each
    n_unsafe_images: int = Field(144, ge=1)  # train: one unsafes query each (sft refusal + forget payload)
    n_retain: int = Field(600, ge=1)  # the n_safe_images safe_safes queries + extra easy-vqa questions
    n_eval_safe_images: int = Field(50, ge=1)
    n_eval_unsafe_images: int = Field(50, ge=1)
    n_utility: int = Field(200, ge=1)
    # Harmful topics (at most the 16 of data/synthetic.py's TOPICS): the safety SFT data, forget set and
    # refusals cover the first n_sft_topics; the eval set's unsafe queries ask only about the others.
    n_topics: int = Field(16, ge=2, le=16)
    n_sft_topics: int = Field(8, ge=1)
    n_pretrain: int = Field(1536, ge=0)  # harmful requests on every topic, every phrasing, answered: the base's
    n_howto: int = Field(96, ge=0)  # benign "What ..." how-to requests, answered (sft and retain; retain as many again in other words)
    n_howto_base: int = Field(512, ge=0)  # benign how-to in every phrasing in the base's data (pretrain)
    pretrain_refused_rate: float = Field(0.1, ge=0, le=1)  # pretrain requests refused at random
    what_rate: float = Field(0.89, ge=0, le=1)  # VLGuard train: 869 / 977 safe instructions start "What"
    can_rate: float = Field(0.87, ge=0, le=1)  # VLGuard train: 847 / 977 unsafe instructions start "Can"
    unsafe_first_words: tuple[str, ...] = ("Share", "Describe", "Please", "Explain", "Write", "Tell")
    shard_size: int = Field(64, ge=1)
    min_shards: int = Field(8, ge=1)  # the streamer needs >= ranks x workers shards per directory

    @field_validator("unsafe_first_words")
    @classmethod
    def _single_words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        if not words:
            raise ValueError("needs at least one word")
        for word in words:
            if not word.isalpha():
                raise ValueError(f"{word!r} is not a single word")
        return tuple(word[0].upper() + word[1:] for word in words)

    @model_validator(mode="after")
    def _retain_holds_safe_queries(self) -> SyntheticSpec:
        if self.n_sft_topics >= self.n_topics:
            raise ValueError(f"n_sft_topics ({self.n_sft_topics}) must be < n_topics ({self.n_topics}): the eval set asks about the rest")
        if self.n_retain < self.n_safe_images:
            raise ValueError(f"n_retain ({self.n_retain}) must be >= n_safe_images ({self.n_safe_images}): retain holds the safe queries")
        return self

    def digest(self) -> str:
        """12 hex digits over the spec and the corpus format: the corpus's cache key."""
        text = json.dumps({"spec": self.model_dump(mode="json"), "format": SYNTHETIC_FORMAT}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]
