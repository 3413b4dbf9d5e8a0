"""Each loss's config section, torch-free: validating a recipe imports no torch or transformers.

``LossConfig`` is a union discriminated on ``name``: a recipe's ``loss.name`` picks the class, and the
training loop's registry (``losses/registry.py``) maps the same name to the loss that runs it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _LossSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SFTConfig(_LossSection):
    """Token-mean cross-entropy over assistant tokens (``losses/sft.py``)."""

    name: Literal["sft"] = "sft"


# NPO presets fill ``logp`` and ``beta`` where the recipe leaves them out: beta is tuned for one
# log-probability convention and is wrong for the other (see losses/npo.py).
NPO_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"logp": "mean", "beta": 0.9},
    "classic": {"logp": "sum", "beta": 0.1},
}


class NPOConfig(_LossSection):
    """Negative Preference Optimization with retain terms (``losses/npo.py``)."""

    name: Literal["npo"] = "npo"
    preset: Literal["paper", "classic"] = "paper"
    logp: Literal["sum", "mean"]
    beta: float
    forget_weight: float = 1.0
    retain_npo_weight: float = 0.0
    retain_ce_weight: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        # Only keys the user left out are filled: an explicit null stays and fails validation loudly
        # instead of silently becoming the preset's value. An unknown preset fills nothing and is
        # reported by the ``preset`` field itself.
        if isinstance(data, dict):
            preset = data.get("preset", "paper")
            fill = NPO_PRESETS.get(preset, {}) if isinstance(preset, str) else {}
            data = {**fill, **data}
        return data


class RMUConfig(_LossSection):
    """Representation Misdirection for Unlearning (``losses/rmu.py``)."""

    name: Literal["rmu"] = "rmu"
    layer: int = Field(2, ge=0)  # language-model layer l; its range is checked against the model before training
    steering_coeff: float = 10.0  # c
    alpha: float = 1.0  # retain activation weight
    retain_ce_weight: float = 0.0
    norm: Literal["mean", "sum_d"] = "mean"
    token_mask: Literal["all", "text", "answer"] = "answer"
    trainable: str | None = "default"  # regex over parameter names; "default": layers l-2..l down_proj + projector
    truncate: bool = True
    kernel: Literal["auto", "triton", "compile", "eager"] = "auto"
    seed: int = 0

    @field_validator("trainable")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        # Whether it matches any parameter is checked against the model before training (engine/preflight.py).
        if pattern is not None and pattern != "default":
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from None
        return pattern


LossConfig = Annotated[SFTConfig | NPOConfig | RMUConfig, Field(discriminator="name")]

LOSS_CONFIGS: dict[str, type[BaseModel]] = {
    cls.model_fields["name"].default: cls for cls in get_args(get_args(LossConfig)[0])
}
