"""Loading a LLaVA for training or evaluation: an HF ``LlavaForConditionalGeneration`` from ``model.path``,
or the embedded tiny checkpoint (``models.embedded``) when no path is set, both through ``from_pretrained``.
"""

from __future__ import annotations

import json
import os
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
from mirage_ds.models.adapters import apply_lora, attn_implementation, freeze_for_training
from mirage_ds.models.embedded import ensure_embedded_model
from mirage_ds.models.pretrained import base_path, ensure_pretrained_base, starts_from_base

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# config.json's dtype names (``dtype``; ``torch_dtype`` in files written before transformers 5) -> DTYPES keys.
CONFIG_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


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
    """The checkpoint directory: ``model.path``, or the embedded model's cache: the pretrained base
    (``models.pretrained``), which this never trains (``ensure_model_path`` does, in a build phase), or, with
    ``model.embedded_base=random``, the untrained tiny model (built on first use: seconds)."""
    if starts_from_base(cfg):
        path = base_path(cfg.embedded)
        if not (path / "config.json").is_file():
            raise ConfigError(f"the pretrained embedded base is not built ({path}): `mirage-ds base build` builds it "
                              "(a few minutes, once), as the launcher's and `mirage-ds reproduce`'s build phase do; "
                              "model.embedded_base=random starts from the untrained tiny model instead")
        return path
    if cfg.path is None:
        return ensure_embedded_model(cfg.embedded)
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path={cfg.path!r}: no config.json there (expected an HF LLaVA checkpoint directory)")
    return path


def ensure_model_path(cfg: ModelConfig) -> Path:
    """The build phase's model step: ``resolve_model_path`` after training the pretrained embedded base when
    ``cfg`` starts from it and it is not cached yet (``models.pretrained.ensure_pretrained_base``: minutes,
    printed with a progress bar). The launcher calls it before its checks, ``mirage-ds reproduce`` before its
    runs, ``mirage-ds base build`` alone."""
    if starts_from_base(cfg):
        ensure_pretrained_base(cfg.embedded)
    return resolve_model_path(cfg)


def adapter_base(adapter_dir: Path) -> Path:
    """The base checkpoint of a LoRA export: its shipped copy if it has one, else the recorded path."""
    info = json.loads((adapter_dir / "base_model.json").read_text())
    return adapter_dir / info["base_copy"] if "base_copy" in info else Path(info["base_model"])


def checkpoint_dtype(path: Path) -> str | None:
    """The dtype checkpoint ``path`` records in its config.json, as a DTYPES key (a LoRA export: its base's);
    None when it records none that DTYPES holds."""
    weights = adapter_base(path) if (path / "adapter_config.json").is_file() else path
    config = json.loads((weights / "config.json").read_text())
    recorded = config.get("dtype") or config.get("torch_dtype")
    return CONFIG_DTYPES.get(recorded) if isinstance(recorded, str) else None


def default_device() -> str:
    """This process's GPU, else cpu. Ranks beyond the node's GPUs share them (``LOCAL_RANK`` modulo the count)."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def resolve_dtype(requested: str, checkpoint: Path, device: str) -> str:
    """The DTYPES key a command loads ``checkpoint`` in, for ``--dtype requested`` on ``device``.

    "auto": on CUDA the checkpoint's own dtype (fp32 when it records none): LLaVA-1.5 ships fp16, the paper
    evaluates in fp16, and upcasting a 7B model doubles its memory. Elsewhere fp32, since CPU half-precision
    kernels are slow or missing; it is also what the tests' pinned numbers were measured in.
    """
    if requested != "auto":
        return requested
    if torch.device(device).type != "cuda":
        return "fp32"
    return checkpoint_dtype(checkpoint) or "fp32"


def dtype_name(dtype: torch.dtype) -> str:
    """The DTYPES key of a torch dtype (what eval.json and the provenance record)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


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


def load_model(path: Path, cfg: ModelConfig) -> LlavaForConditionalGeneration:
    """The plain HF model at ``path`` in ``model.dtype`` (no freezing, no LoRA): also the frozen reference."""
    return LlavaForConditionalGeneration.from_pretrained(
        path,
        local_files_only=True,
        dtype=DTYPES[cfg.dtype],
        attn_implementation=attn_implementation(cfg.attn_implementation)[0],  # the launcher warned of a fallback
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
