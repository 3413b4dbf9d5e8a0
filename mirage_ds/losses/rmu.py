"""Representation Misdirection for Unlearning (Li et al. 2024, WMDP), as used by Safety Mirage.

    L = ||h_l(x_f) - c*u||^2  +  alpha * ||h_l(x_r) - h_l^frozen(x_r)||^2  +  w_ce * CE(x_r)

``h_l`` is the output of language-model layer ``layer``; ``u`` ~ U[0,1)^D, normalised, seeded and saved with
the run (``control.safetensors``: the vector ``c*u``). Normalisation: ``mean`` (over D and the masked-in
tokens: WMDP with ``token_mask=all``, open-unlearning with ``answer``, the official Safety Mirage code with
``all_positions``, padding included: preset ``official``) or ``sum_d`` (sum over D, mean
over tokens: the paper's squared norm). By default only layers l-2..l ``mlp.down_proj`` and the projector
train (the official full fine-tuning setting); under LoRA the adapters train.

With ``truncate`` the forward stops after layer l for both the policy and the frozen model: nothing above
l enters the loss, so those layers are neither run nor back-propagated through (the retain CE term, when
on, needs the full forward and disables truncation for the retain policy pass).
"""

from __future__ import annotations

import torch

from mirage_ds.config import ModelConfig
from mirage_ds.losses import functional as F
from mirage_ds.losses.base import Batch, Loss, LossContext, LossOutput, Needs, model_inputs
from mirage_ds.specs.losses import RMUConfig
from mirage_ds.models.hooks import hooked_forward


def token_mask(batch: Batch, kind: str) -> torch.Tensor:
    """[B, T] bool: which positions' activations enter the RMU loss. ``all_positions`` keeps the padding
    (the official code's MSE has no mask), ``all`` every real token, ``text`` those that are not image
    tokens, ``answer`` the labelled ones."""
    valid = batch["attention_mask"].bool()
    if kind == "all_positions":
        return torch.ones_like(valid)
    if kind == "all":
        return valid
    if kind == "text":
        return valid & ~batch["image_mask"].bool()
    return batch["labels"] != -100


def control_vector(hidden_size: int, coeff: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=generator, dtype=torch.float32)
    return coeff * u / u.norm()


class RMULoss(Loss):
    cfg: RMUConfig

    def __init__(self, cfg: RMUConfig, model_config: ModelConfig) -> None:
        super().__init__(cfg, model_config)
        self.is_lora = model_config.lora is not None
        self._control: torch.Tensor | None = None

    @property
    def needs(self) -> Needs:
        trainable = self.cfg.trainable
        if trainable == "default":
            if self.is_lora:
                trainable = None
            else:
                layers = "|".join(str(i) for i in range(max(0, self.cfg.layer - 2), self.cfg.layer + 1))
                trainable = rf"language_model\.layers\.({layers})\.mlp\.down_proj\.|multi_modal_projector\."
        return Needs(streams=("forget", "retain"), reference=True, hooked_layer=self.cfg.layer, trainable=trainable,
                     truncate=self.cfg.truncate)

    def control(self, hidden_size: int) -> torch.Tensor:
        if self._control is None:
            self._control = control_vector(hidden_size, self.cfg.steering_coeff, self.cfg.seed)
        return self._control

    def state(self) -> dict[str, torch.Tensor]:
        return {"control": self._control} if self._control is not None else {}

    def __call__(self, model: torch.nn.Module, batches: dict[str, Batch], ctx: LossContext) -> LossOutput:
        cfg = self.cfg
        assert ctx.reference is not None
        forget, retain = batches["forget"], batches["retain"]

        h_forget = hooked_forward(model, model_inputs(forget), cfg.layer, cfg.truncate)["hidden"]
        control = self.control(h_forget.shape[-1]).to(h_forget.device)
        forget_loss = F.rmu_forget(h_forget, control, token_mask(forget, cfg.token_mask), cfg.norm, kernel=cfg.kernel)

        need_logits = cfg.retain_ce_weight > 0
        policy_retain = hooked_forward(model, model_inputs(retain), cfg.layer, cfg.truncate and not need_logits,
                                       logits=need_logits)
        h_retain = policy_retain["hidden"]
        h_frozen = ctx.reference(retain)["hidden"]
        retain_loss = F.rmu_retain(h_retain, h_frozen, token_mask(retain, cfg.token_mask), cfg.norm, kernel=cfg.kernel)

        total = forget_loss + cfg.alpha * retain_loss
        terms = {"forget": forget_loss.detach(), "retain": retain_loss.detach()}
        if need_logits:
            ce = F.sft(policy_retain["logits"], retain["labels"])
            total = total + cfg.retain_ce_weight * ce
            terms["ce"] = ce.detach()
        return LossOutput(loss=total, terms=terms)
