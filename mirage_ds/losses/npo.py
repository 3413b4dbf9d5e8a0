"""Negative Preference Optimization (Zhang et al. 2024) on the forget set, with retain terms.

    L = w_f * NPO(forget) + alpha * NPO_retain(retain) + w_ce * CE(retain)
    NPO(x, y)        = -(2/beta) * log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))
    NPO_retain(x, y) = -(2/beta) * log sigmoid(+beta * (log pi_theta(y|x) - log pi_ref(y|x)))   (mirrored)
                     = +(2/beta) * log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))   (official)

``log pi`` is the per-sequence **sum** of answer-token log-probs (Zhang et al., open-unlearning; beta ~0.1:
preset ``classic``), their per-sequence token **mean** (beta 0.7-0.9: preset ``paper``), or the token
mean over the whole batch, one value per batch (``batch_mean``: minus the HF Trainer's loss, as the
official Safety Mirage code reads it: preset ``official``). The conventions are not interchangeable: a
beta tuned for one is wrong for another. The mirrored retain-NPO term rewards staying at or above the
reference on the CE's retain batch and saturates at 0; the official one, +(2/beta) log sigmoid(beta (l -
l_ref)) with l = -log pi, is minus the forget term on a second retain draw (stream ``retain_npo``) and never
saturates. ``alpha`` = 0 turns it off.
"""

from __future__ import annotations

import torch

from mirage_ds.losses import functional as F
from mirage_ds.losses.base import Batch, Loss, LossContext, LossOutput, Needs, model_inputs
from mirage_ds.specs.losses import NPOConfig


class NPOLoss(Loss):
    cfg: NPOConfig

    @property
    def needs(self) -> Needs:
        streams = ("forget", "retain")
        if self.cfg.retain_npo_weight and self.cfg.retain_npo_form == "official":
            streams += ("retain_npo",)  # a second draw from the retain set (data/corpus.py)
        return Needs(streams=streams, reference=True)

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
        terms = {"forget": forget_loss.detach(), "ce": ce.detach(),
                 "logp_forget": policy_f.detach().mean(), "logp_forget_ref": ref_f.detach().mean()}
        if cfg.retain_npo_weight:
            official = cfg.retain_npo_form == "official"
            draw = batches["retain_npo"] if official else retain
            draw_logits = model(**model_inputs(draw)).logits if official else retain_logits
            policy_r = F.sequence_logp(draw_logits, draw["labels"], cfg.logp)
            ref_r = F.sequence_logp(ctx.reference(draw)["logits"], draw["labels"], cfg.logp)
            # Mirrored: the arguments swapped, -(2/beta) log sigmoid(+beta (policy - ref)). Official: minus the
            # forget term, +(2/beta) log sigmoid(-beta (policy - ref)).
            retain_npo = -F.npo(policy_r, ref_r, cfg.beta) if official else F.npo(ref_r, policy_r, cfg.beta)
            total = total + cfg.retain_npo_weight * retain_npo
            terms["retain_npo"] = retain_npo.detach()
        return LossOutput(loss=total, terms=terms)
