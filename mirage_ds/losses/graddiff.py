"""Gradient difference (Liu et al. 2022, "Continual learning and private unlearning"; open-unlearning's GradDiff):
gradient ascent on the forget set, descent on the retain set.

    L = -gamma * NLL(forget) + alpha * R(retain),   R = NLL (default) or KL(pi_ref || pi_theta)

NLL is ``functional.sft``: the token-mean cross-entropy over every answer token of the batch, one scalar per
batch. It is the HF Trainer's ``outputs.loss``, which open-unlearning's GradDiff reads for both sets (locuslab/
open-unlearning, src/trainer/unlearn/grad_diff.py), and this project's SFT and retain CE, so its gamma and alpha
carry over (its configs/trainer/GradDiff.yaml: gamma = alpha = 1, retain_loss_type NLL: the defaults here).
With ``retain_kl`` the retain term is open-unlearning's retain_loss_type KL: the KL from the frozen reference's
next-token distribution, on the retain batch's answer positions (``functional.retain_kl``; open-unlearning
averages over every position). The reference is the loop's, as NPO's: the adapters off under LoRA, a separately
loaded engine under full fine-tuning (engine/reference.py); without ``retain_kl`` no reference is built.

The forget term is unbounded below: nothing stops the ascent but the step count, which is why NPO and SimNPO
replaced it. Logged: ``forget_ce`` (the forget NLL, rising as the model unlearns) and ``ce`` or ``retain_kl``.
"""

from __future__ import annotations

import torch

from mirage_ds.losses import functional as F
from mirage_ds.losses.base import Batch, Loss, LossContext, LossOutput, Needs, model_inputs
from mirage_ds.specs.losses import GradDiffConfig


class GradDiffLoss(Loss):
    cfg: GradDiffConfig

    @property
    def needs(self) -> Needs:
        return Needs(streams=("forget", "retain"), reference=self.cfg.retain_kl)

    def __call__(self, model: torch.nn.Module, batches: dict[str, Batch], ctx: LossContext) -> LossOutput:
        cfg = self.cfg
        forget, retain = batches["forget"], batches["retain"]
        forget_ce = F.sft(model(**model_inputs(forget)).logits, forget["labels"])
        retain_logits = model(**model_inputs(retain)).logits
        if cfg.retain_kl:
            assert ctx.reference is not None
            retain_loss = F.retain_kl(retain_logits, ctx.reference(retain)["logits"], retain["labels"])
            retain_name = "retain_kl"
        else:
            retain_loss = F.sft(retain_logits, retain["labels"])
            retain_name = "ce"
        total = F.grad_diff(forget_ce, retain_loss, cfg.forget_weight, cfg.retain_weight)
        return LossOutput(loss=total, terms={"forget_ce": forget_ce.detach(), retain_name: retain_loss.detach()})
