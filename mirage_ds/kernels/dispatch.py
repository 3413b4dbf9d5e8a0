"""Pick and run one implementation of the masked RMU loss: ``kernel: auto | triton | compile | eager``.

``auto`` takes the Triton kernel on CUDA (when triton is installed), torch.compile elsewhere, and the eager
reference where torch.compile cannot run. An explicit choice that cannot run here is an error, never a
silent fallback: a recipe that names a kernel gets that kernel or stops.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from mirage_ds.kernels.compiled import compile_available, rmu_loss_compiled
from mirage_ds.kernels.eager import NORMS, Norm, rmu_loss_eager

KernelName = Literal["auto", "triton", "compile", "eager"]
KERNELS: tuple[str, ...] = ("auto", "triton", "compile", "eager")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _check_triton(device: torch.device) -> None:
    if not _triton_installed():
        raise RuntimeError("kernel 'triton' needs the triton package (pip install 'mirage-ds[dev]')")
    if device.type == "cuda":
        return
    if not _interpret_requested():
        raise RuntimeError(f"kernel 'triton' on a {device.type} tensor runs only under Triton's interpreter: "
                           "set TRITON_INTERPRET=1 before the process starts, or use kernel 'compile' or 'eager'")
    from mirage_ds.kernels import triton_rmu

    # triton.jit decides compiled vs interpreted when the kernel module is imported; an import that
    # happened before TRITON_INTERPRET was set holds a GPU-only kernel.
    if not triton_rmu.INTERPRETED:
        raise RuntimeError("kernel 'triton' on CPU: mirage_ds.kernels.triton_rmu was imported before "
                           "TRITON_INTERPRET=1 was set; set it before the process starts")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """The concrete implementation ("triton", "compile" or "eager") ``kernel`` means for ``device``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown RMU kernel {kernel!r} (allowed: {', '.join(KERNELS)})")
    if kernel == "auto":
        if device.type == "cuda" and _triton_installed():
            return "triton"
        return "compile" if compile_available(device) else "eager"
    if kernel == "triton":
        _check_triton(device)
    elif kernel == "compile" and not compile_available(device):
        raise RuntimeError(f"kernel 'compile': torch.compile cannot build for {device.type} here "
                           "(unsupported platform or no C++ compiler on PATH); use kernel 'eager'")
    return kernel


def _check_shapes(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown RMU norm {norm!r} (allowed: {', '.join(NORMS)})")
    if h.dim() != 3 or not h.is_floating_point():
        raise ValueError(f"h must be a floating [B, T, D] tensor, got {tuple(h.shape)} {h.dtype}")
    if mask.dtype != torch.bool or mask.shape != h.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(h.shape[:2])}, got {tuple(mask.shape)} {mask.dtype}")
    if target.shape not in (h.shape[-1:], h.shape):
        raise ValueError(f"target must be [D] = {tuple(h.shape[-1:])} or h's shape {tuple(h.shape)}, "
                         f"got {tuple(target.shape)}")
    if not (h.device == target.device == mask.device):
        raise ValueError(f"h, target and mask on different devices: {h.device}, {target.device}, {mask.device}")


def rmu_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: Norm,
             kernel: KernelName = "auto") -> torch.Tensor:
    """Masked RMU activation-norm loss, sum over masked-in tokens of ||h - target||^2, normalised.

    h: [B, T, D] (fp32/bf16/fp16, usually requires grad); target: [D] (forget: c*u, broadcast over tokens)
    or [B, T, D] (retain: frozen activations); mask: [B, T] bool; norm: "mean" (divide by n*D) or "sum_d"
    (divide by n), n = masked-in tokens. Returns a 0-dim fp32 tensor; 0 (graph kept) when n = 0.
    The target is a constant: no gradient flows to it. Formula: ``mirage_ds.kernels.eager``.
    """
    _check_shapes(h, target, mask, norm)
    target = target.detach()
    impl = resolve_kernel(kernel, h.device)
    if impl == "triton":
        from mirage_ds.kernels.triton_rmu import rmu_loss_triton

        return rmu_loss_triton(h, target, mask, norm)
    if impl == "compile":
        return rmu_loss_compiled(h, target, mask, norm)
    return rmu_loss_eager(h, target, mask, norm)
