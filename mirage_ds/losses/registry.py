"""The loss registry: adding a loss is one new file plus one line here."""

from __future__ import annotations

from typing import Any

from mirage_ds.config import LossConfig
from mirage_ds.losses.base import Loss
from mirage_ds.losses.npo import NPOLoss
from mirage_ds.losses.rmu import RMULoss
from mirage_ds.losses.sft import SFTLoss

REGISTRY: dict[str, type[Loss]] = {
    "sft": SFTLoss,
    "npo": NPOLoss,
    "rmu": RMULoss,
}


def loss_config_class(name: str) -> type[LossConfig]:
    if name not in REGISTRY:
        raise KeyError(f"unknown loss {name!r} (registered: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name].Config


def build_loss(cfg: LossConfig, model_config: Any) -> Loss:
    return REGISTRY[cfg.name](cfg, model_config)
