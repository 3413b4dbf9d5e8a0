"""Triton kernel for the masked RMU loss: the forward writes dL/dh in the same pass (Liger-Kernel style).

The loss is a pure function of each token row, so one program per row reads h (and the target) once,
accumulates ||h - target||^2 in fp32 and writes 2 * scale * (h - target) as the gradient, in h's dtype.
The backward only multiplies that stored gradient by the incoming scalar. Memory moved: read h (+ the
target row for retain), write the gradient; no [tokens, D] fp32 temporary exists at any point.

Whether the kernel is compiled for the GPU or interpreted on the CPU (``TRITON_INTERPRET=1``) is fixed by
``triton.jit`` when this module is imported; ``INTERPRETED`` records which, for the dispatcher.
Formula and normalisation: ``mirage_ds.kernels.eager`` (the reference this kernel is tested against).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mirage_ds.kernels.eager import NORMS


@triton.jit
def _rmu_row_kernel(h_ptr, h_row_stride, t_ptr, t_row_stride, mask_ptr, count_ptr, grad_ptr, grad_row_stride,
                    loss_ptr, D, inv_d, BLOCK_D: tl.constexpr, STORE_GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    # A masked-out row loads nothing (live_d = 0): padding that holds NaN/Inf is never read, its
    # gradient is written as exact zeros and its loss term is 0.
    live_d = tl.load(mask_ptr + row).to(tl.int32) * D
    # The token count is read from device memory, not passed from the host: no sync to launch.
    count = tl.load(count_ptr).to(tl.float32)
    scale = inv_d / tl.maximum(count, 1.0)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        live = cols < live_d
        h = tl.load(h_ptr + row * h_row_stride + cols, mask=live, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + row * t_row_stride + cols, mask=live, other=0.0).to(tl.float32)
        diff = h - t
        acc += diff * diff
        if STORE_GRAD:
            grad = (2.0 * scale * diff).to(grad_ptr.dtype.element_ty)
            tl.store(grad_ptr + row * grad_row_stride + cols, grad, mask=cols < D)
    tl.store(loss_ptr + row, tl.sum(acc, axis=0) * scale)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # fp64 would be silently reduced in fp32
INTERPRETED: bool = not isinstance(_rmu_row_kernel, triton.runtime.JITFunction)


def _launch(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: str,
            store_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """h: [B, T, D]; target: [D] or [B, T, D]; mask: [B, T] bool.

    Returns the 0-dim fp32 loss and, with ``store_grad``, dL/dh as [B, T, D] in h's dtype.
    """
    d = h.shape[-1]
    rows = h.reshape(-1, d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    if target.dim() == 1:
        rows_target, target_stride = target.contiguous(), 0  # stride 0: every row reads the one control vector
    else:
        rows_target = target.reshape(-1, d)
        if rows_target.stride(-1) != 1:
            rows_target = rows_target.contiguous()
        target_stride = rows_target.stride(0)
    row_mask = mask.reshape(-1).contiguous().view(torch.uint8)
    count = row_mask.sum(dtype=torch.int32)
    n_rows = rows.shape[0]
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=h.device)
    grad = torch.empty_like(rows, memory_format=torch.contiguous_format) if store_grad else None
    block_d = min(triton.next_power_of_2(d), 4096)
    _rmu_row_kernel[(n_rows,)](
        rows, rows.stride(0), rows_target, target_stride, row_mask, count,
        grad if grad is not None else rows, grad.stride(0) if grad is not None else 0, row_loss,
        d, 1.0 / d if norm == "mean" else 1.0,
        BLOCK_D=block_d, STORE_GRAD=store_grad, num_warps=8 if block_d >= 2048 else 4,
    )
    # Per-row partial sums reduced by torch, not atomics: the result is deterministic run to run.
    return row_loss.sum(), (grad.view(h.shape) if grad is not None else None)


class _FusedRMULoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
        loss, grad = _launch(h, target, mask, norm, store_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        # A loss that enters the total with weight 1 gets grad_output == 1: skipping the multiply saves a
        # read and a write of [tokens, D], i.e. doubles the kernel's effective bandwidth, for one host sync
        # (the check reads a device scalar), the trade Liger-Kernel makes too.
        if torch.equal(grad_output, torch.ones_like(grad_output)):
            return grad, None, None, None
        # In place, so the backward allocates no second [tokens, D] buffer. A second backward through the
        # same graph (retain_graph=True) then fails autograd's version check instead of scaling twice.
        grad.mul_(grad_output)
        return grad, None, None, None


def rmu_loss_triton(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """h: [B, T, D] fp32/bf16/fp16; target: [D] or [B, T, D] (no gradient); mask: [B, T] bool.

    Returns the 0-dim fp32 loss of ``mirage_ds.kernels.eager.rmu_loss_eager``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} (allowed: {', '.join(NORMS)})")
    if h.dtype not in _DTYPES:
        raise ValueError(f"kernel 'triton' takes fp32, bf16 or fp16 activations, got {h.dtype}")
    if torch.is_grad_enabled() and h.requires_grad:
        return _FusedRMULoss.apply(h, target, mask, norm)
    loss, _ = _launch(h, target, mask, norm, store_grad=False)
    return loss
