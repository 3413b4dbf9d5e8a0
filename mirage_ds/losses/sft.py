"""Supervised fine-tuning: token-mean cross-entropy over assistant tokens (LLaVA's convention)."""

from __future__ import annotations

import torch

from mirage_ds.losses import functional as F
from mirage_ds.losses.base import Batch, Loss, LossContext, LossOutput, model_inputs


class SFTLoss(Loss):
    def __call__(self, model: torch.nn.Module, batches: dict[str, Batch], ctx: LossContext) -> LossOutput:
        batch = batches["train"]
        logits = model(**model_inputs(batch)).logits
        loss = F.sft(logits, batch["labels"])
        return LossOutput(loss=loss, terms={"ce": loss.detach()})
