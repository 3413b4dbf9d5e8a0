"""The eager reference for the masked RMU activation-norm loss: the one formula every other path matches.

    L = sum_{b,t} m[b,t] * ||h[b,t] - target[b,t]||^2 / denom
    denom = n * D   (norm "mean": over D and the n masked-in tokens; WMDP, open-unlearning)
    denom = n       (norm "sum_d": the paper's squared norm, averaged over tokens)

Source: RMU (Li et al. 2024, "The WMDP Benchmark", Eq. 1-2); Safety Mirage (arXiv 2503.11832) Sec. 5.
The compiled path compiles ``masked_sq_sum`` below and shares ``normalise``; the Triton kernel implements
the same sum and scale by hand and is tested against ``rmu_loss_eager``.
"""

from __future__ import annotations

from typing import Literal

import torch

Norm = Literal["mean", "sum_d"]
NORMS: tuple[str, ...] = ("mean", "sum_d")


def masked_sq_sum(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum over masked-in rows and D of (h - target)^2, accumulated in fp32 (fp64 stays fp64).

    h: [..., D] float; target: [D] (broadcast) or h's shape; mask: h.shape[:-1] bool. Returns a 0-dim
    tensor of dtype fp32, or fp64 for fp64 inputs (gradcheck).
    """
    acc = torch.promote_types(h.dtype, torch.float32)
    # The mask is applied to the difference, before squaring, with where rather than a multiply:
    # 0 * NaN = NaN, so padding rows holding NaN/Inf would otherwise leak into the sum, and masking only the
    # square would still leak through its backward (d(x^2)/dx = 2x at x = NaN).
    diff = torch.where(mask.unsqueeze(-1), h.to(acc) - target.to(acc), 0.0)
    return (diff * diff).sum()


def normalise(total: torch.Tensor, mask: torch.Tensor, d: int, norm: str) -> torch.Tensor:
    """Divide the masked sum by n*D ("mean") or n ("sum_d"), n = masked-in tokens.

    With no masked-in token the sum is an exact 0 that still carries the graph; clamping n to 1 keeps the
    result 0 (with zero gradient) instead of 0/0 = NaN.
    """
    count = mask.sum().clamp_min(1)
    if norm == "mean":
        return total / (count * d)
    return total / count


def rmu_loss_eager(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """h: [B, T, D]; target: [D] or [B, T, D]; mask: [B, T] bool. Returns a 0-dim fp32 (fp64) loss."""
    return normalise(masked_sq_sum(h, target, mask), mask, h.shape[-1], norm)
