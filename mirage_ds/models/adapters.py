"""What trains: the vision tower frozen, the projector per ``train_projector``, and the language model
either fully or through LoRA adapters (PEFT)."""

from __future__ import annotations

import re

import torch
from transformers import LlavaForConditionalGeneration

from mirage_ds.config import ModelConfig


def freeze_for_training(model: torch.nn.Module, cfg: ModelConfig) -> None:
    """Vision tower frozen; projector per ``train_projector``; language model full (or LoRA, set by PEFT)."""
    for name, param in model.named_parameters():
        if "vision_tower" in name:
            param.requires_grad_(False)
        elif "multi_modal_projector" in name:
            param.requires_grad_(cfg.train_projector)
        else:
            param.requires_grad_(cfg.lora is None)


def apply_lora(model: LlavaForConditionalGeneration, cfg: ModelConfig) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT model with ``cfg.lora`` adapters on the language model's target modules
    (and a trainable copy of the projector when ``train_projector``)."""
    from peft import LoraConfig, get_peft_model  # here, not at the top: full fine-tuning never imports PEFT

    if cfg.lora is None:
        raise ValueError("apply_lora needs model.lora to be set")
    names = "|".join(re.escape(m) for m in cfg.lora.target_modules)
    peft_config = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        # Only the language model: a bare name list would also hit CLIP's q/k/v/out projections.
        target_modules=rf".*language_model.*\.({names})$",
        modules_to_save=["multi_modal_projector"] if cfg.train_projector else None,
        task_type=None,
    )
    # PEFT upcasts bf16/fp16 adapters to fp32 by default; ZeRO-3 flattens all trainable parameters into one
    # buffer of one dtype (zero/utils.py defragment asserts it), so the adapters keep the model's dtype, as
    # the projector copy does. DeepSpeed's optimizer still holds fp32 master weights for them.
    return get_peft_model(model, peft_config, autocast_adapter_dtype=False)
