"""The config checked against the model it names, before any distributed work.

``load_config`` validates a recipe without the model; what only the model can answer (how deep the
language model is, which parameter names a ``trainable`` pattern matches) is checked here. Without it a
bad ``loss.layer`` or ``loss.trainable`` fails at the first step, as a traceback on every rank.
"""

from __future__ import annotations

import re

import torch
from transformers import AutoConfig, LlavaForConditionalGeneration, PretrainedConfig

from mirage_ds.config import ConfigError, ModelConfig, TrainConfig
from mirage_ds.losses.registry import build_loss
from mirage_ds.models.adapters import apply_lora
from mirage_ds.models.loading import resolve_model_path


def check_against_model(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` (one line) when the loss's hooked layer or trainable pattern does not fit the model.

    Reads only the checkpoint's config: the parameter names come from the model built on the meta device
    (no weights, no memory), wrapped by PEFT under LoRA exactly as the training run wraps it.
    """
    needs = build_loss(cfg.loss, cfg.model).needs
    if needs.hooked_layer is None and needs.trainable is None:
        return
    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model), local_files_only=True)
    model_name = f"model.path={cfg.model.path!r}" if cfg.model.path else "the embedded model"
    depth = config.text_config.num_hidden_layers
    if needs.hooked_layer is not None and not 0 <= needs.hooked_layer < depth:
        raise ConfigError(f"loss.layer={needs.hooked_layer} is out of range: {model_name} has {depth} language-model "
                          f"layers (0..{depth - 1})")
    if needs.trainable is not None:
        names = parameter_names(config, cfg.model)
        if not any(re.search(needs.trainable, name) for name in names):
            example = next((name for name in names if "language_model.layers." in name), names[0])
            raise ConfigError(f"loss.trainable={needs.trainable!r} matches no parameter of {model_name} "
                              f"(names look like {example!r})")


def parameter_names(config: PretrainedConfig, model_cfg: ModelConfig) -> list[str]:
    """The names ``named_parameters()`` gives the training model (PEFT-prefixed under LoRA)."""
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
        if model_cfg.lora is not None:
            model = apply_lora(model, model_cfg)
    return [name for name, _ in model.named_parameters()]
