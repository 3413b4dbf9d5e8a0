"""The frozen reference model (NPO's pi_ref, RMU's frozen activations, through ``models.hooks.hooked_forward``).

Two distributed special cases live here, one function each:
- LoRA: the reference is the policy with its adapters disabled. No second copy: the base weights are
  frozen, so "adapters off" is exactly the starting model.
- Full fine-tuning under ZeRO-3: a second model loaded separately and wrapped in an inference-only
  DeepSpeed engine. A ``deepcopy`` of a partitioned ZeRO-3 model would copy parameters of numel 0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import deepspeed
import torch

from mirage_ds.config import TrainConfig
from mirage_ds.engine.distributed import zero3_construction
from mirage_ds.engine.ds_config import zero_stage
from mirage_ds.losses.base import Batch, Needs, model_inputs
from mirage_ds.models.hooks import hooked_forward
from mirage_ds.models.loading import load_model, resolve_model_path


class Reference:
    """``reference(batch)`` -> {"logits"} or {"hidden"} under no_grad; ``module`` is the model it runs."""

    def __init__(self, run: Callable[[Batch], dict[str, torch.Tensor]], module: torch.nn.Module) -> None:
        self._run = run
        self.module = module

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self._run(batch)


def _adapters_off_reference(engine: Any, needs: Needs, truncate: bool) -> Reference:
    peft_model = engine.module

    def run(batch: Batch) -> dict[str, torch.Tensor]:
        with peft_model.disable_adapter():
            return _forward(engine, batch, needs.hooked_layer, truncate)

    return Reference(run, peft_model)


def _separate_engine_reference(cfg: TrainConfig, ds_config: dict[str, Any], needs: Needs, truncate: bool) -> Reference:
    ref_config = copy.deepcopy(ds_config)
    ref_config.pop("optimizer", None)
    ref_config.pop("scheduler", None)
    if zero_stage(ref_config) != 3:
        # ZeRO-1/2 shard only optimizer state and gradients, which an inference model has none of.
        ref_config["zero_optimization"] = {"stage": 0}
    path = resolve_model_path(cfg.model)
    with zero3_construction(ref_config, path):
        model = load_model(path, cfg.model)
    model.config.use_cache = False
    model.eval().requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ref_config)
    engine.eval()

    return Reference(lambda batch: _forward(engine, batch, needs.hooked_layer, truncate), engine.module)


def _forward(model: Any, batch: Batch, layer: int | None, truncate: bool) -> dict[str, torch.Tensor]:
    if layer is None:
        return {"logits": model(**model_inputs(batch)).logits}
    return hooked_forward(model, model_inputs(batch), layer, truncate)


def build_reference(cfg: TrainConfig, engine: Any, ds_config: dict[str, Any], needs: Needs) -> Reference:
    """The reference the loss's ``needs`` ask for: adapters off under LoRA, else a separate frozen engine."""
    if cfg.model.lora is not None:
        return _adapters_off_reference(engine, needs, needs.truncate)
    return _separate_engine_reference(cfg, ds_config, needs, needs.truncate)
