"""Batched greedy generation with the training preprocessing (pad-to-square, dtype) under a named template.

The official Safety Mirage evaluation generates one sample at a time; here prompts are left-padded into
batches (decoder-only generation continues from the right edge, so padding goes on the left and the
attention mask hides it). The template is the paper's evaluation preset ``llava_v1`` unless named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.template import EVAL_TEMPLATE, Template
from mirage_ds.models.loading import adapter_base, image_token_count

# Greedy decoding, every setting that can change the chosen token given explicitly: transformers fills
# any setting left unset from the checkpoint's generation_config (a repetition penalty, top-k, a
# temperature), which would make "greedy" mean something else for each checkpoint.
GREEDY: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "temperature": None,
    "top_p": None,
    "top_k": None,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
}


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

        base = LlavaForConditionalGeneration.from_pretrained(adapter_base(path), local_files_only=True, dtype=dtype)
        # Merged once: generation then runs at base-model speed with no adapter indirection.
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer, image_processor


class Generator:
    """Greedy responses for ``Prompt``s in batches of ``batch_size``, up to ``max_new_tokens`` each."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, *, batch_size: int = 16,
                 max_new_tokens: int = 256, max_length: int = 2048, pad_to_square: bool = True,
                 template: str = EVAL_TEMPLATE, progress: bool = True) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.dtype = next(model.parameters()).dtype  # the images are cast to it; eval.json records it
        n_image = image_token_count(model.config)
        self.template = template
        self.pre = Preprocessor(Template(tokenizer, n_image, max_length, name=template), image_processor,
                                pad_to_square, self.dtype)
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self.decoding: dict[str, Any] = {**GREEDY, "max_new_tokens": max_new_tokens}

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
        """key -> decoded response (special tokens stripped, whitespace trimmed)."""
        out: dict[str, str] = {}
        batches = range(0, len(prompts), self.batch_size)
        for start in tqdm(batches, desc="generate", disable=not self.progress, unit="batch"):
            chunk = prompts[start : start + self.batch_size]
            inputs = self._collate([self.pre.prompt_example(p.question, p.image, p.key) for p in chunk])
            generated = self.model.generate(
                **inputs,
                **self.decoding,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            for prompt, tokens in zip(chunk, new_tokens):
                out[prompt.key] = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return out
