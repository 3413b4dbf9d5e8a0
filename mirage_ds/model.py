"""Model adapter: HF ``LlavaForConditionalGeneration`` from ``model.path``, or the embedded tiny LLaVA.

The embedded model is built from config, saved with ``save_pretrained`` into a cache directory keyed by
its spec, and then loaded with ``from_pretrained(local_files_only=True)`` exactly like a real checkpoint:
the 7B path is this code with a different ``model.path``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from mirage_ds.config import ConfigError, ModelConfig, TinyModelSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_root() -> Path:
    return Path(os.environ.get("MIRAGE_CACHE", Path.home() / ".cache" / "mirage-ds"))


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Cross-process lock so that one rank builds a cached artefact while the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def spec_hash(spec: TinyModelSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


def build_tiny_llava(spec: TinyModelSpec, out_dir: Path) -> None:
    """Write a tiny LLaVA checkpoint (config, safetensors, tokenizer, image and full processor) to out_dir."""
    from mirage_ds.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(spec.vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    n_patches = (spec.image_size // spec.patch_size) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_hidden * 2,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            projection_dim=spec.vision_hidden,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_heads,
            max_position_embeddings=spec.max_position,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token_id,
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    # The PIL processor: the default one wants torchvision, which this CPU stack does not ship.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)


def ensure_embedded_model(spec: TinyModelSpec) -> Path:
    """Path of the cached tiny checkpoint for ``spec``, building it once (atomically) if absent."""
    target = cache_root() / "models" / f"tiny-llava-{spec_hash(spec)}"
    with build_lock(target):
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
            try:
                build_tiny_llava(spec, tmp)
                shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover (no config.json)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class ModelBundle:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    path: Path
    n_image_tokens: int


def resolve_model_path(cfg: ModelConfig) -> Path:
    if cfg.path is None:
        return ensure_embedded_model(cfg.embedded)
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path={cfg.path!r}: no config.json there (expected an HF LLaVA checkpoint directory)")
    return path


def image_token_count(config: LlavaConfig) -> int:
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
    return LlavaForConditionalGeneration.from_pretrained(
        path,
        local_files_only=True,
        dtype=DTYPES[cfg.dtype],
        attn_implementation=_attn_implementation(cfg.attn_implementation),
    )


def _freeze_for_training(model: torch.nn.Module, cfg: ModelConfig) -> None:
    """Vision tower frozen; projector per ``train_projector``; language model full (or LoRA, set by PEFT)."""
    for name, param in model.named_parameters():
        if "vision_tower" in name:
            param.requires_grad_(False)
        elif "multi_modal_projector" in name:
            param.requires_grad_(cfg.train_projector)
        else:
            param.requires_grad_(cfg.lora is None)


def apply_lora(model: LlavaForConditionalGeneration, cfg: ModelConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    assert cfg.lora is not None
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
    return get_peft_model(model, peft_config)


def build_model(cfg: ModelConfig) -> ModelBundle:
    path = resolve_model_path(cfg)
    model = load_model(path, cfg)
    model.config.use_cache = False
    _freeze_for_training(model, cfg)
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
