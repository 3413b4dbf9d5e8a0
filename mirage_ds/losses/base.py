"""What every loss is: a declaration of needs and a call on (model, batches, context).

Its config section lives in ``specs/losses.py`` (torch-free, so a recipe validates without torch).

The training loop reads ``needs`` once to decide which data streams to open and which extra models or
hooks to build; it never branches on the loss's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mirage_ds.config import ModelConfig
from mirage_ds.specs.losses import LossConfig

Batch = dict[str, Any]


@dataclass(frozen=True)
class Needs:
    """``streams``: data streams consumed per step, e.g. ("train",) or ("forget", "retain").
    ``reference``: a frozen copy of the starting model (NPO's pi_ref, RMU's frozen activations).
    ``hooked_layer``: language-model layer whose output the loss reads (RMU).
    ``trainable``: regex over parameter names restricting what trains (RMU's layers l-2..l).
    ``truncate``: the reference may stop its forward after ``hooked_layer`` (nothing above it is read)."""

    streams: tuple[str, ...] = ("train",)
    reference: bool = False
    hooked_layer: int | None = None
    trainable: str | None = None
    truncate: bool = False


@dataclass
class LossOutput:
    loss: torch.Tensor
    # Logged separately (forget, retain, ce, ...): detached 0-dim tensors, turned into numbers only by the
    # loop's one all-reduce per step (a float() here would be a host sync per micro-step).
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossContext:
    """What the loop built for the loss from its ``Needs``.

    ``reference(batch)`` runs the frozen reference on a batch under no_grad and returns ``{"logits"}``,
    or ``{"hidden"}`` (the hooked layer's output) when the loss's ``Needs`` name a hooked layer.
    """

    reference: Callable[[Batch], dict[str, torch.Tensor]] | None = None


class Loss(ABC):
    """A loss built from its config section and the model section (e.g. RMU's trainable set under LoRA)."""

    def __init__(self, cfg: LossConfig, model_config: ModelConfig) -> None:
        self.cfg = cfg

    @property
    def needs(self) -> Needs:
        return Needs()

    @abstractmethod
    def __call__(self, model: torch.nn.Module, batches: dict[str, Batch], ctx: LossContext) -> LossOutput: ...

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save with the run (RMU's control vector); empty by default."""
        return {}


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def to_device(batch: Batch, device: torch.device, dtype: torch.dtype) -> Batch:
    out: Batch = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if key == "pixel_values":
                value = value.to(dtype)
        out[key] = value
    return out
