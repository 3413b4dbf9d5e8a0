"""Batched generation with exactly the training preprocessing (template, pad-to-square, dtype).

The official Safety Mirage evaluation generates one sample at a time; here prompts are left-padded into
batches (decoder-only generation continues from the right edge, so padding goes on the left and the
attention mask hides it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.template import Template
from mirage_ds.models.loading import image_token_count


@dataclass(frozen=True)
class Prompt:
    """One generation request: a question about an image (PNG bytes); ``key`` identifies it in results."""

    key: str
    question: str
    image: bytes


def load_for_eval(path: Path, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any, Any]:
    """(model, tokenizer, image processor) from an export: HF weights, or a PEFT adapter merged into its base."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        info = json.loads((path / "base_model.json").read_text()) if (path / "base_model.json").is_file() else {}
        base_path = path / info["base_copy"] if "base_copy" in info else Path(info.get("base_model", ""))
        base = LlavaForConditionalGeneration.from_pretrained(base_path, local_files_only=True, dtype=dtype)
        # Merged once: generation then runs at base-model speed with no adapter indirection.
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer, image_processor


class Generator:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, *, batch_size: int = 16,
                 max_new_tokens: int = 256, max_length: int = 2048, pad_to_square: bool = True,
                 do_sample: bool = False, temperature: float = 1.0, seed: int = 0, progress: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        dtype = next(model.parameters()).dtype
        n_image = image_token_count(model.config)
        self.pre = Preprocessor(Template(tokenizer, n_image, max_length), image_processor, pad_to_square, dtype)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.do_sample, self.temperature, self.seed, self.progress = do_sample, temperature, seed, progress

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (length - len(e["input_ids"])) + e["input_ids"] for e in examples])
        mask = torch.tensor([[0] * (length - len(e["input_ids"])) + [1] * len(e["input_ids"]) for e in examples])
        pixels = torch.stack([e["pixel_values"] for e in examples])
        device = next(self.model.parameters()).device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "pixel_values": pixels.to(device)}

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> dict[str, str]:
        """key -> decoded response (special tokens stripped)."""
        if self.do_sample:
            torch.manual_seed(self.seed)
        out: dict[str, str] = {}
        batches = range(0, len(prompts), self.batch_size)
        for start in tqdm(batches, desc="generate", disable=not self.progress, unit="batch"):
            chunk = prompts[start : start + self.batch_size]
            inputs = self._collate([self.pre.prompt_example(p.question, p.image, p.key) for p in chunk])
            generated = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=self.do_sample,
                temperature=self.temperature if self.do_sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            for prompt, tokens in zip(chunk, new_tokens):
                out[prompt.key] = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return out
