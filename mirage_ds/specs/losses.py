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


def _fill_from_preset(data: Any, presets: dict[str, dict[str, Any]], default: str) -> Any:
    """``data`` with the keys it leaves out taken from its ``preset`` (``default`` when unnamed).

    Only keys the user left out are filled: an explicit null stays and fails validation loudly instead of
    silently becoming the preset's value. An unknown preset fills nothing and is reported by the
    ``preset`` field itself.
    """
    if isinstance(data, dict):
        preset = data.get("preset", default)
        fill = presets.get(preset, {}) if isinstance(preset, str) else {}
        data = {**fill, **data}
    return data


# NPO presets fill ``logp`` and ``beta`` where the recipe leaves them out: beta is tuned for one
# log-probability convention and is wrong for the other (see losses/npo.py). ``official`` is the
# official Safety Mirage code exactly (docs/paper-protocol.md, section 3): the batch's token-mean loss as
# log-likelihood, and its retain-NPO term on a second retain draw.
NPO_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"logp": "mean", "beta": 0.9},
    "classic": {"logp": "sum", "beta": 0.1},
    "official": {"logp": "batch_mean", "beta": 0.9, "retain_npo_weight": 1.0, "retain_npo_form": "official"},
}


class NPOConfig(_LossSection):
    """Negative Preference Optimization with retain terms (``losses/npo.py``)."""

    name: Literal["npo"] = "npo"
    preset: Literal["paper", "classic", "official"] = "paper"
    logp: Literal["sum", "mean", "batch_mean"]
    beta: float
    forget_weight: float = 1.0
    retain_npo_weight: float = 0.0
    # "mirrored": -(2/beta) log sigmoid(+beta (log pi - log pi_ref)) on the CE's retain batch;
    # "official": +(2/beta) log sigmoid(beta (l - l_ref)), l = -log pi, on a second retain draw.
    retain_npo_form: Literal["mirrored", "official"] = "mirrored"
    retain_ce_weight: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return _fill_from_preset(data, NPO_PRESETS, "paper")


# RMU presets fill the token mask and the norm. ``official``: the official code's plain MSE over every
# position of the batch, the image tokens and the padding included (docs/paper-protocol.md, section 3).
RMU_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"norm": "mean", "token_mask": "answer"},
    "official": {"norm": "mean", "token_mask": "all_positions"},
}


class RMUConfig(_LossSection):
    """Representation Misdirection for Unlearning (``losses/rmu.py``)."""

    name: Literal["rmu"] = "rmu"
    preset: Literal["default", "official"] = "default"
    layer: int = Field(2, ge=0)  # language-model layer l; its range is checked against the model before training
    steering_coeff: float = 10.0  # c
    alpha: float = 1.0  # retain activation weight
    retain_ce_weight: float = 0.0
    norm: Literal["mean", "sum_d"]
    # all: every real token (padding out); all_positions: padding in too; text: no image tokens; answer.
    token_mask: Literal["all", "all_positions", "text", "answer"]
    trainable: str | None = "default"  # regex over parameter names; "default": layers l-2..l down_proj + projector
    truncate: bool = True
    kernel: Literal["auto", "triton", "compile", "eager"] = "auto"
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return _fill_from_preset(data, RMU_PRESETS, "default")

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


class GradDiffConfig(_LossSection):
    """Gradient difference: ascent on the forget set, descent on the retain set (``losses/graddiff.py``).

    The defaults are open-unlearning's GradDiff (gamma = alpha = 1, retain_loss_type NLL).
    """

    name: Literal["graddiff"] = "graddiff"
    forget_weight: float = 1.0  # gamma
    retain_weight: float = 1.0  # alpha
    # False: the retain term is the retain CE (retain_loss_type NLL); True: KL(pi_ref || pi_theta) on the
    # retain answer tokens instead (retain_loss_type KL), which asks the loop for the reference model.
    retain_kl: bool = False


# SimNPO presets fill beta, delta and the two weights. ``open_unlearning``: open-unlearning's
# configs/trainer/SimNPO.yaml (beta 4.5, delta 0, gamma 0.125, alpha 1, retain NLL); its comments map delta and
# gamma to the gamma and npo_coeff of the SimNPO authors' code (OPTML-Group/Unlearn-Simple, TOFU/config/forget.yaml).
SIMNPO_PRESETS: dict[str, dict[str, Any]] = {
    "open_unlearning": {"beta": 4.5, "delta": 0.0, "forget_weight": 0.125, "retain_ce_weight": 1.0},
}


class SimNPOConfig(_LossSection):
    """Simple NPO, reference-free and length-normalised (``losses/simnpo.py``)."""

    name: Literal["simnpo"] = "simnpo"
    preset: Literal["open_unlearning"] = "open_unlearning"
    beta: float = Field(gt=0)
    # The reward margin, as the paper's Eq. writes it: -(2/beta) log sigmoid(-(beta/|y|) log pi - delta).
    # The reference code subtracts its delta before the beta: its delta d is delta = beta * d here.
    delta: float
    forget_weight: float
    retain_ce_weight: float

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return _fill_from_preset(data, SIMNPO_PRESETS, "open_unlearning")


LossConfig = Annotated[SFTConfig | NPOConfig | RMUConfig | GradDiffConfig | SimNPOConfig, Field(discriminator="name")]

LOSS_CONFIGS: dict[str, type[BaseModel]] = {
    cls.model_fields["name"].default: cls for cls in get_args(get_args(LossConfig)[0])
}
