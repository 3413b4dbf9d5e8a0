"""The embedded default model: a tiny LLaVA built from ``TinyModelSpec`` and cached on disk.

It is built from config, saved with ``save_pretrained`` into a cache directory keyed by its spec, and then
loaded with ``from_pretrained(local_files_only=True)`` exactly like a real checkpoint
(``models.loading``): the 7B path is the same code with a different ``model.path``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from mirage_ds.atomic import atomic_dir
from mirage_ds.cache import build_lock, cache_root
from mirage_ds.config import TinyModelSpec
from mirage_ds.models.tokenizer import build_tokenizer


# Bumped whenever the builder writes different files for the same spec (the cache key must change with them).
BUILDER_VERSION = 2


def spec_hash(spec: TinyModelSpec) -> str:
    """12 hex digits of the spec's canonical JSON and the builder version: the cache key of its checkpoint."""
    key = {"spec": spec.model_dump(), "builder": BUILDER_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def build_tiny_llava(spec: TinyModelSpec, out_dir: Path) -> None:
    """Write a tiny LLaVA checkpoint (config, safetensors, tokenizer, image and full processor) to out_dir."""
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
        # As llava-hf's processor: the vision tower emits a CLS token besides the patches and the "default"
        # strategy drops it, so the processor counts it in and takes it out again (n_patches tokens per image).
        num_additional_image_tokens=1,
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
            with atomic_dir(target, overwrite=True) as tmp:  # replaces an incomplete leftover (no config.json)
                build_tiny_llava(spec, tmp)
    return target
