"""Negative Preference Optimization (Zhang et al. 2024) on the forget set, with retain terms.

    L = w_f * NPO(forget) + alpha * NPO_retain(retain) + w_ce * CE(retain)
    NPO(x, y)        = -(2/beta) * log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))
    NPO_retain(x, y) = -(2/beta) * log sigmoid(+beta * (log pi_theta(y|x) - log pi_ref(y|x)))

``log pi`` is the per-sequence **sum** of answer-token log-probs (Zhang et al., open-unlearning; beta ~0.1:
preset ``classic``) or their token **mean** (the official Safety Mirage code; beta 0.7-0.9: preset
``paper``). The two conventions are not interchangeable: a beta tuned for one is wrong for the other.
The retain-NPO term is the mirror image of the forget term (it rewards staying at or above the
reference on retain answers); ``alpha`` = 0 turns it off.
"""

from __future__ import annotations

import torch

from mirage_ds.losses import functional as F
from mirage_ds.losses.base import Batch, Loss, LossContext, LossOutput, Needs, model_inputs
from mirage_ds.losses.configs import NPOConfig


class NPOLoss(Loss):
    cfg: NPOConfig

    @property
    def needs(self) -> Needs:
        return Needs(streams=("forget", "retain"), reference=True)

    def __call__(self, model: torch.nn.Module, batches: dict[str, Batch], ctx: LossContext) -> LossOutput:
        cfg = self.cfg
        assert ctx.reference is not None
        forget, retain = batches["forget"], batches["retain"]

        policy_f = F.sequence_logp(model(**model_inputs(forget)).logits, forget["labels"], cfg.logp)
        ref_f = F.sequence_logp(ctx.reference(forget)["logits"], forget["labels"], cfg.logp)
        forget_loss = F.npo(policy_f, ref_f, cfg.beta)

        retain_logits = model(**model_inputs(retain)).logits
        ce = F.sft(retain_logits, retain["labels"])
        total = cfg.forget_weight * forget_loss + cfg.retain_ce_weight * ce
        terms = {"forget": float(forget_loss.detach()), "ce": float(ce.detach()),
                 "logp_forget": float(policy_f.detach().mean()), "logp_forget_ref": float(ref_f.mean())}
        if cfg.retain_npo_weight:
            policy_r = F.sequence_logp(retain_logits, retain["labels"], cfg.logp)
            ref_r = F.sequence_logp(ctx.reference(retain)["logits"], retain["labels"], cfg.logp)
            # npo(-x) is the mirrored term: -(2/beta) log sigmoid(+beta (policy - ref)).
            retain_npo = F.npo(ref_r, policy_r, cfg.beta)
            total = total + cfg.retain_npo_weight * retain_npo
            terms["retain_npo"] = float(retain_npo.detach())
        return LossOutput(loss=total, terms=terms)
