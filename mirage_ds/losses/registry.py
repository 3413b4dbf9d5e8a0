"""The loss registry: ``loss.name`` -> the class that computes it.

Adding a loss is one new file, its config class in ``specs/losses.py`` and one line here.
"""

from __future__ import annotations

from mirage_ds.config import ModelConfig
from mirage_ds.losses.base import Loss
from mirage_ds.specs.losses import LossConfig
from mirage_ds.losses.graddiff import GradDiffLoss
from mirage_ds.losses.npo import NPOLoss
from mirage_ds.losses.rmu import RMULoss
from mirage_ds.losses.sft import SFTLoss
from mirage_ds.losses.simnpo import SimNPOLoss

REGISTRY: dict[str, type[Loss]] = {
    "sft": SFTLoss,
    "npo": NPOLoss,
    "rmu": RMULoss,
    "graddiff": GradDiffLoss,
    "simnpo": SimNPOLoss,
}


def build_loss(cfg: LossConfig, model_config: ModelConfig) -> Loss:
    """The loss named by ``cfg.name``, built from its section and the model section."""
    return REGISTRY[cfg.name](cfg, model_config)
