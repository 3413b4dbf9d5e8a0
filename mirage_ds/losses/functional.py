"""Pure loss functions on tensors: answer log-likelihoods, SFT cross-entropy, NPO, the RMU terms, and the
baselines GradDiff (with its retain KL) and SimNPO.

Labels follow the Hugging Face causal-LM convention: ``labels`` has the shape of ``input_ids``, -100 marks
positions outside the answer, and logits at position t predict the label at t+1 (the one-token shift is
done here, not by the caller).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as nnf
from torch.utils.checkpoint import checkpoint

from mirage_ds.kernels import KernelName, Norm, rmu_loss

IGNORE_INDEX = -100
# fp32 elements per log-sum-exp chunk (64 MiB): bounds the fp32 copy of the logits that exists at once.
LSE_CHUNK_ELEMENTS = 1 << 24


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # fp32 accumulation; fp64 stays fp64 (gradcheck)


def _lse_fp32(rows: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(rows.to(_acc_dtype(rows.dtype)), dim=-1)


def _logsumexp_fp32(rows: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """rows: [N, V] any float dtype -> [N] fp32 log-sum-exp, computed chunk by chunk.

    Under autograd each chunk of bf16/fp16 rows is checkpointed: logsumexp saves its fp32 input for the
    backward, so without it an fp32 copy of every answer row's logits would live until the backward. With it
    only the rows in their own dtype are kept and each chunk's fp32 copy is rebuilt in the backward, one at a
    time. fp32 rows are not copied, so there the checkpoint would only recompute (0.4 ms a step on the
    embedded default, benchmarks/RESULTS.md).
    """
    chunk = max(1, chunk_elements // max(1, rows.shape[-1]))
    track = torch.is_grad_enabled() and rows.requires_grad and rows.dtype != _acc_dtype(rows.dtype)
    parts = [checkpoint(_lse_fp32, part, use_reentrant=False) if track else _lse_fp32(part)
             for part in rows.split(chunk)]
    return torch.cat(parts)


def _answer_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows [N, V] of the logits that predict an answer token, their targets [N], answer mask [B, T-1])."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits [B, T, V] and labels [B, T] expected, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    shift_labels = labels[:, 1:]
    answer = shift_labels != IGNORE_INDEX
    return logits[:, :-1][answer], shift_labels[answer], answer


def answer_token_logp(logits: torch.Tensor, labels: torch.Tensor, *,
                      chunk_elements: int = LSE_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the answer tokens, in fp32 (fp64 logits stay fp64).

    logits: [B, T, V] (any float dtype); labels: [B, T] int, -100 outside the answer.
    Returns (token_logp [N] fp32, sequence index of each token [N] int64, answer tokens per sequence [B]),
    N = answer tokens in the batch after the shift: log p(y_{t+1}) = z_t[y_{t+1}] - logsumexp(z_t).

    Only the N answer rows enter the log-softmax: the target logit is gathered in the logits' own dtype
    (exact in fp32) and the log-sum-exp is chunked, so no second [B, T, V] fp32 tensor is built.
    Selecting the rows is one host sync (a boolean index), the price of skipping prompt and image tokens.
    """
    rows, targets, answer = _answer_rows(logits, labels)
    batch_index = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(answer)[answer]
    picked = rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(_acc_dtype(rows.dtype))
    return picked - _logsumexp_fp32(rows, chunk_elements), batch_index, answer.sum(dim=1)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """[B] int64: answer tokens per sequence after the one-token shift, |y| (labels [B, T], -100 outside)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


LogpReduction = Literal["sum", "mean", "batch_mean"]


def sequence_logp(logits: torch.Tensor, labels: torch.Tensor, reduction: LogpReduction) -> torch.Tensor:
    """Log-likelihood of the answers, log pi(y|x): [B] fp32, or [1] for ``batch_mean``.

    logits: [B, T, V]; labels: [B, T], -100 outside the answer. ``sum`` adds each sequence's answer-token
    log-probs (NPO as in Zhang et al. 2024, open-unlearning); ``mean`` averages them per sequence;
    ``batch_mean`` averages over every answer token of the batch and gives one value for the whole batch:
    minus the HF Trainer's token-mean loss, which is what the official Safety Mirage NPO reads
    (docs/paper-protocol.md, section 3; with one sequence per batch it equals ``mean``). A sequence (or batch)
    without answer tokens gets 0 (not NaN).
    """
    if reduction not in ("sum", "mean", "batch_mean"):
        raise ValueError(f"unknown reduction {reduction!r} (allowed: sum, mean, batch_mean)")
    token_logp, batch_index, counts = answer_token_logp(logits, labels)
    if reduction == "batch_mean":
        return (token_logp.sum() / max(1, token_logp.numel())).reshape(1)
    total = token_logp.new_zeros(labels.shape[0]).index_add(0, batch_index, token_logp)
    if reduction == "sum":
        return total
    return total / counts.clamp_min(1)


def sft(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy over answer tokens (LLaVA / HF causal-LM convention): 0-dim fp32.

    logits: [B, T, V]; labels: [B, T], -100 ignored. CE = -(1/N) sum_t log p(y_{t+1}); with no answer
    token in the batch the loss is 0 (graph kept) rather than PyTorch's 0/0 = NaN.
    """
    token_logp, _, _ = answer_token_logp(logits, labels)
    return -token_logp.sum() / max(1, token_logp.numel())


def npo(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization (Zhang et al. 2024, Eq. 3): 0-dim.

    policy_logp, ref_logp: [B] sequence log-likelihoods (``sequence_logp``).
    L = mean_b -(2/beta) * log sigmoid(-beta * (policy_logp - ref_logp)). Neither input is detached here:
    the caller computes the reference under no_grad (and may swap the arguments or negate the result for
    the retain terms).
    """
    if beta <= 0:
        raise ValueError(f"NPO beta must be > 0, got {beta}")
    return (-(2.0 / beta) * nnf.logsigmoid(-beta * (policy_logp - ref_logp))).mean()


def grad_diff(forget_nll: torch.Tensor, retain_loss: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Gradient difference (Liu et al. 2022; open-unlearning's GradDiff): -gamma * NLL_f + alpha * L_r, 0-dim.

    forget_nll: 0-dim ``sft`` of the forget batch (ascended); retain_loss: 0-dim ``sft`` of the retain batch
    (retain_loss_type NLL) or ``retain_kl`` (KL). open-unlearning's defaults: gamma = alpha = 1, NLL.
    """
    return -gamma * forget_nll + alpha * retain_loss


def retain_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, *,
              chunk_elements: int = LSE_CHUNK_ELEMENTS) -> torch.Tensor:
    """KL(pi_ref || pi_theta) of the next-token distributions, token mean over the batch's answer positions:
    0-dim fp32 (open-unlearning's ``compute_kl_divergence`` direction: the reference is the target).

    logits, ref_logits: [B, T, V] of the policy and the reference on one batch; labels: [B, T], -100 outside
    the answer. Per row, with z the policy's logits and p the reference's softmax:
        KL = sum_v p log p - sum_v p z + logsumexp(z),
    so the policy's log-softmax is never built: under autograd only the reference's fp32 probabilities [N, V]
    (a constant) and the policy's rows in their own dtype are kept, the log-sum-exp chunked as in
    ``answer_token_logp``. open-unlearning averages over every position of the batch, prompt and padding
    included; here only the answer positions count, as in every other term of this project (in a VLM the
    image positions would otherwise outnumber the answer). The three sums cancel only to fp32 rounding (of order
    1e-7 log V), so a KL of 0 may read as -1e-7. No answer token: 0, graph kept.
    """
    if ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits must match logits' shape {tuple(logits.shape)}, got {tuple(ref_logits.shape)}")
    rows, _, _ = _answer_rows(logits, labels)
    ref_rows, _, _ = _answer_rows(ref_logits.detach(), labels)
    ref_logp = torch.log_softmax(ref_rows.to(_acc_dtype(ref_rows.dtype)), dim=-1)
    ref_p = ref_logp.exp()
    cross = (ref_p * rows.to(ref_p.dtype)).sum(-1)
    per_row = (ref_p * ref_logp).sum(-1) - cross + _logsumexp_fp32(rows, chunk_elements)
    return per_row.sum() / max(1, per_row.numel())


def simnpo(policy_logp: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """Simple NPO (Fan et al. 2024, "Simplicity Prevails", arXiv 2410.07163): reference-free, length-normalised.

    policy_logp: [B] per-sequence **sums** of answer-token log-probs (``sequence_logp(..., "sum")``);
    lengths: [B] answer tokens per sequence, |y|. Returns 0-dim
    L = mean_b -(2/beta) * log sigmoid(-(beta/|y_b|) * log pi_theta(y_b|x_b) - delta), delta the paper's reward
    margin. The reference code (OPTML-Group/Unlearn-Simple, open-unlearning) writes beta * (NLL/|y| - d),
    i.e. delta = beta * d. A sequence without answer tokens divides by 1 (0 instead of 0/0 = NaN).
    """
    if beta <= 0:
        raise ValueError(f"SimNPO beta must be > 0, got {beta}")
    if lengths.shape != policy_logp.shape:
        raise ValueError(f"lengths must match policy_logp's shape {tuple(policy_logp.shape)}, got {tuple(lengths.shape)}")
    normalised = policy_logp / lengths.clamp_min(1).to(policy_logp.dtype)
    return (-(2.0 / beta) * nnf.logsigmoid(-beta * normalised - delta)).mean()


def rmu_forget(h: torch.Tensor, control: torch.Tensor, mask: torch.Tensor, norm: Norm,
               kernel: KernelName = "auto") -> torch.Tensor:
    """RMU forget term ||h_l(x_f) - c*u||^2 (Li et al. 2024 WMDP, Eq. 1): 0-dim fp32.

    h: [B, T, D] layer-l activations on the forget batch; control: [D], the target c*u; mask: [B, T] bool.
    norm "mean": mean over D and masked-in tokens; "sum_d": sum over D, mean over tokens (the paper).
    """
    if control.dim() != 1:
        raise ValueError(f"control must be the [D] vector c*u, got shape {tuple(control.shape)}")
    return rmu_loss(h, control, mask, norm, kernel)


def rmu_retain(h: torch.Tensor, h_frozen: torch.Tensor, mask: torch.Tensor, norm: Norm,
               kernel: KernelName = "auto") -> torch.Tensor:
    """RMU retain term ||h_l(x_r) - h_l^frozen(x_r)||^2 (Li et al. 2024 WMDP, Eq. 2): 0-dim fp32.

    h, h_frozen: [B, T, D] activations of the trained and the frozen model on the retain batch (no gradient
    flows to h_frozen); mask: [B, T] bool; norm as in ``rmu_forget``.
    """
    if h_frozen.shape != h.shape:
        raise ValueError(f"h_frozen must match h's shape {tuple(h.shape)}, got {tuple(h_frozen.shape)}")
    return rmu_loss(h, h_frozen, mask, norm, kernel)
