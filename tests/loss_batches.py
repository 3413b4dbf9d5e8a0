"""Shared by the loss-number tests: real preprocessed text batches and a nudged reference model."""

from __future__ import annotations

import copy

import torch

from mirage_ds.data.images import placeholder_png
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import Record, Turn
from mirage_ds.data.streamer import collate_padded
from mirage_ds.data.template import Template


def text_batch(bundle, pairs: list[tuple[str, str]], tag: str, role: str) -> dict:
    """One padded batch of (question, answer) pairs through the training preprocessing, placeholder images."""
    pre = Preprocessor(Template(bundle.tokenizer, bundle.n_image_tokens, 256), bundle.image_processor, True)
    samples = []
    for i, (question, answer) in enumerate(pairs):
        record = Record(id=f"{tag}{i}", turns=[Turn(role="user", text=question), Turn(role="assistant", text=answer)],
                        role=role, source="synthetic")
        samples.append(pre.train_example(record, placeholder_png(record.id), record.id))
    return collate_padded(bundle.tokenizer.pad_token_id)(samples)


def policy_and_reference(model: torch.nn.Module, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(policy, reference): the model in eval mode and a copy with every weight nudged by seeded noise."""
    policy = model.eval()
    reference = copy.deepcopy(policy)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return policy, reference
