"""Loading a LLaVA for training or evaluation: an HF ``LlavaForConditionalGeneration`` from ``model.path``,
or the embedded tiny checkpoint (``models.embedded``) when no path is set, both through ``from_pretrained``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from mirage_ds.config import ConfigError, ModelConfig
from mirage_ds.models.adapters import apply_lora, freeze_for_training
from mirage_ds.models.embedded import ensure_embedded_model
from mirage_ds.models.pretrained import ensure_pretrained_base

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelBundle:
    """The model to train (PEFT-wrapped under LoRA) with the tokenizer and image processor saved beside it;
    ``n_image_tokens``: how many ``<image>`` positions one image takes in the prompt."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    path: Path
    n_image_tokens: int


def resolve_model_path(cfg: ModelConfig) -> Path:
    """The checkpoint directory: ``model.path``, or the embedded model's cache (built on first use): the pretrained
    base (``models.pretrained``) or, with ``model.embedded_base=random``, the untrained tiny model."""
    if cfg.path is None:
        if cfg.embedded_base == "pretrained":
            return ensure_pretrained_base(cfg.embedded)
        return ensure_embedded_model(cfg.embedded)
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path={cfg.path!r}: no config.json there (expected an HF LLaVA checkpoint directory)")
    return path


def image_token_count(config: LlavaConfig) -> int:
    """Image tokens per image: one per vision patch, plus CLS under the "full" feature-select strategy."""
    vision = config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + 1 if config.vision_feature_select_strategy == "full" else n


def language_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """Decoder layers of the language model, with or without a PEFT wrapper (``base_model.model.`` prefix)."""
    for name, module in model.named_modules():
        if re.search(r"(^|\.)language_model\.layers$", name) and isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError("no '<...>.language_model.layers' ModuleList in this model (is it a LLaVA?)")


def _attn_implementation(requested: str) -> str:
    if requested == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            # flash-attn is the optional `gpu` extra; SDPA gives the same result with more memory.
            return "sdpa"
        if not torch.cuda.is_available():
            return "sdpa"
    return requested


def load_model(path: Path, cfg: ModelConfig) -> LlavaForConditionalGeneration:
    """The plain HF model at ``path`` in ``model.dtype`` (no freezing, no LoRA): also the frozen reference."""
    return LlavaForConditionalGeneration.from_pretrained(
        path,
        local_files_only=True,
        dtype=DTYPES[cfg.dtype],
        attn_implementation=_attn_implementation(cfg.attn_implementation),
    )


def build_model(cfg: ModelConfig) -> ModelBundle:
    """The model to train: loaded, frozen per ``models.adapters``, gradient-checkpointed if asked, LoRA-wrapped
    if ``model.lora`` is set; with its tokenizer and image processor."""
    path = resolve_model_path(cfg)
    model = load_model(path, cfg)
    model.config.use_cache = False
    freeze_for_training(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With LoRA the embeddings are frozen, so checkpointed blocks would see inputs without grad
        # and LoRA-B would never receive a gradient; this makes the input embeddings require grad.
        model.enable_input_require_grads()
    if cfg.lora is not None:
        model = apply_lora(model, cfg)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return ModelBundle(model, tokenizer, image_processor, path, image_token_count(model.config))
