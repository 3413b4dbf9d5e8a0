"""What trains: the vision tower frozen, the projector per ``train_projector``, and the language model
either fully or through LoRA adapters (PEFT); and which attention implementation a request can run with."""

from __future__ import annotations

import importlib.util
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


def attn_implementation(requested: str) -> tuple[str, str | None]:
    """(the implementation that runs here for ``model.attn_implementation=requested``, why it is not the one
    requested, or None when it is). flash-attn is the optional ``gpu`` extra and runs only on CUDA; without it
    SDPA gives the same result with more memory. The launcher turns a fallback into one warning and records
    what ran (engine/resolution.py), so a config never says flash_attention_2 of a run that used SDPA."""
    if requested != "flash_attention_2":
        return requested, None
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "flash-attn is not installed (the optional gpu extra)"
    if not torch.cuda.is_available():
        return "sdpa", "flash-attn needs CUDA"
    return requested, None
