"""Simple NPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
Unlearning", arXiv 2410.07163): NPO without the reference model, its log-likelihood normalised by length.

    L = w_f * mean_b -(2/beta) * log sigmoid(-(beta/|y|) * log pi_theta(y|x) - delta)  +  w_ce * CE(retain)

``log pi_theta(y|x)`` is the per-sequence **sum** of answer-token log-probs and |y| the answer's length, so
(1/|y|) log pi is the per-token mean; CE is the retain batch's token-mean cross-entropy (``functional.sft``), as
the reference code's retain NLL. No reference model is built. The preset ``open_unlearning`` holds
open-unlearning's configs/trainer/SimNPO.yaml (beta 4.5, delta 0, gamma = w_f 0.125, alpha = w_ce 1); its
delta enters as beta * (NLL/|y| - delta), the paper's margin here is that delta times beta (specs/losses.py).
Logged: ``forget``, ``ce`` and ``logp_forget``, the forget batch's mean per-token log-prob (1/|y|) log pi.
"""

from __future__ import annotations

import torch

from mirage_ds.losses import functional as F
from mirage_ds.losses.base import Batch, Loss, LossContext, LossOutput, Needs, model_inputs
from mirage_ds.specs.losses import SimNPOConfig


class SimNPOLoss(Loss):
    cfg: SimNPOConfig

    @property
    def needs(self) -> Needs:
        return Needs(streams=("forget", "retain"))

    def __call__(self, model: torch.nn.Module, batches: dict[str, Batch], ctx: LossContext) -> LossOutput:
        cfg = self.cfg
        forget, retain = batches["forget"], batches["retain"]
        policy_f = F.sequence_logp(model(**model_inputs(forget)).logits, forget["labels"], "sum")
        lengths = F.answer_lengths(forget["labels"])
        forget_loss = F.simnpo(policy_f, lengths, cfg.beta, cfg.delta)
        ce = F.sft(model(**model_inputs(retain)).logits, retain["labels"])
        total = cfg.forget_weight * forget_loss + cfg.retain_ce_weight * ce
        per_token = policy_f.detach() / lengths.clamp_min(1)
        return LossOutput(loss=total, terms={"forget": forget_loss.detach(), "ce": ce.detach(),
                                             "logp_forget": per_token.mean()})
