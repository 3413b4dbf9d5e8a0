"""Optimizer parameter groups and the learning-rate schedule (LLaVA presets: cosine, warmup 3%)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from mirage_ds.config import OptimConfig


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable params split by (projector?, decayed?). Biases and norms take no weight decay."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        projector = "multi_modal_projector" in name
        decay = param.ndim >= 2 and "norm" not in name
        groups.setdefault((projector, decay), []).append(param)
    if not groups:
        raise ValueError("no trainable parameters: check model.lora / model.train_projector / the loss's trainable selection")
    out = []
    for (projector, decay), params in sorted(groups.items()):
        lr = cfg.projector_lr if projector and cfg.projector_lr is not None else cfg.lr
        out.append({"params": params, "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0})
    return out


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    warmup = math.ceil(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
