"""Each functional loss against numbers worked out by hand (math module alongside), plus gradchecks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf

from mirage_ds.losses import functional as F

# One sequence, vocab 3. Position 0's logits [1, 2, 3] predict label 2; position 1's [0, 0, 0] predict
# label 0; position 2 has no next token. Label -100 at position 0 is the prompt.
LOGITS = [[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, 0.0, -1.0]]]
LABELS = [[-100, 2, 0]]
LOGP_0 = -0.40760596444438013  # 3 - ln(e + e^2 + e^3)
LOGP_1 = -1.0986122886681098  # -ln 3


def test_hand_numbers_agree_with_math() -> None:
    assert LOGP_0 == pytest.approx(3 - math.log(math.e + math.e**2 + math.e**3), abs=1e-15)
    assert LOGP_1 == pytest.approx(-math.log(3), abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logp_by_hand(dtype: torch.dtype) -> None:
    # Second sequence has no answer token: 0 under both reductions, never NaN. The integer logits are
    # exact in bf16, so bf16 must give the fp32 numbers: the log-softmax runs in fp32.
    logits = torch.tensor(LOGITS + LOGITS, dtype=dtype)
    labels = torch.tensor(LABELS + [[-100, -100, -100]])
    total = F.sequence_logp(logits, labels, "sum")
    mean = F.sequence_logp(logits, labels, "mean")
    assert total.dtype == mean.dtype == torch.float32
    torch.testing.assert_close(total, torch.tensor([-1.50621825311249, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(mean, torch.tensor([-0.753109126556245, 0.0]), atol=1e-6, rtol=0)
    assert total[0].item() == pytest.approx(LOGP_0 + LOGP_1, abs=1e-6)


def test_sequence_logp_without_answer_keeps_graph_and_zero_grad() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    out = F.sequence_logp(logits, torch.full((1, 3), -100), "mean")
    assert out.tolist() == [0.0]
    out.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_sequence_logp_rejects_unknown_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        F.sequence_logp(torch.tensor(LOGITS), torch.tensor(LABELS), "max")  # type: ignore[arg-type]


def test_sft_by_hand_and_gradient() -> None:
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = F.sft(logits, torch.tensor(LABELS))
    assert loss.item() == pytest.approx(-(LOGP_0 + LOGP_1) / 2, abs=1e-6)  # 0.753109126556245
    loss.backward()
    # d CE / d z_t = (softmax(z_t) - onehot(y_{t+1})) / N, N = 2; the last position predicts nothing.
    e = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    p0 = [v / sum(e) for v in e]
    expected = [[[p0[0] / 2, p0[1] / 2, (p0[2] - 1) / 2], [(1 / 3 - 1) / 2, 1 / 6, 1 / 6], [0.0, 0.0, 0.0]]]
    torch.testing.assert_close(logits.grad, torch.tensor(expected), atol=1e-6, rtol=0)


def test_sft_matches_cross_entropy_and_is_zero_without_answer() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[:, :3] = -100
    labels[2] = -100
    ref = nnf.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(F.sft(logits, labels), ref, atol=1e-6, rtol=1e-6)
    empty = F.sft(logits.requires_grad_(), torch.full((3, 7), -100))
    assert empty.item() == 0.0 and empty.requires_grad


def test_chunked_logsumexp_matches_one_chunk_with_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[0, :2] = -100
    outs = []
    for chunk in (22, 1 << 24):  # 2 rows per chunk vs everything in one chunk
        logits = base.clone().requires_grad_()
        logp, index, counts = F.answer_token_logp(logits, labels, chunk_elements=chunk)
        (logp * torch.arange(1.0, logp.numel() + 1, dtype=logp.dtype)).sum().backward()
        outs.append((logp.detach(), index, counts, logits.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    assert outs[0][2].tolist() == [4, 5]  # sequence 0 loses label 1 to the prompt


def test_answer_logp_saves_no_fp32_copy_of_the_logits() -> None:
    # The memory claim: under autograd only bf16 logits are saved for the backward, no fp32 [N, V] copy.
    logits = torch.randn(2, 9, 64, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 64, (2, 9))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.sequence_logp(logits, labels, "sum")
    big_fp32 = [t for t in saved if t.dtype == torch.float32 and t.numel() >= 16 * 64]
    assert saved and not big_fp32


def test_npo_by_hand() -> None:
    policy = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    loss = F.npo(policy, ref, beta=0.5)
    # -(2/beta) log sigmoid(-beta d) = (2/beta) ln(1 + e^{beta d}); d = [0.5, -1.0]
    by_hand = (3.3037576795153742 + 1.8963079367204267) / 2
    assert by_hand == pytest.approx((4 * math.log(1 + math.exp(0.25)) + 4 * math.log(1 + math.exp(-0.5))) / 2)
    assert loss.item() == pytest.approx(by_hand, abs=1e-12)  # 2.6000328081179003
    loss.backward()
    # dL/d policy_b = 2 sigmoid(beta d_b) / B
    expected = [2 / (1 + math.exp(-0.25)) / 2, 2 / (1 + math.exp(0.5)) / 2]
    torch.testing.assert_close(policy.grad, torch.tensor(expected, dtype=torch.float64))
    at_ref = F.npo(torch.zeros(3), torch.zeros(3), beta=0.9)
    assert at_ref.item() == pytest.approx(2 / 0.9 * math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        F.npo(policy, ref, beta=0.0)


KERNELS = ["eager", "compile"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("norm", "value", "grad"), [
    # diffs from c*u = [1, 0]: row 0 [0, 2] (4), row 1 [2, 4] (20); total 24 over n = 2 tokens, D = 2
    ("sum_d", 12.0, [[0.0, 2.0], [2.0, 4.0], [0.0, 0.0]]),  # 24 / 2, grad 2 diff / 2
    ("mean", 6.0, [[0.0, 1.0], [1.0, 2.0], [0.0, 0.0]]),  # 24 / 4, grad 2 diff / 4
])
def test_rmu_forget_by_hand(kernel: str, norm: str, value: float, grad: list[list[float]]) -> None:
    # The masked-out third token holds NaN and Inf (as padding may): neither may reach loss or grad.
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [math.nan, math.inf]]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss = F.rmu_forget(h, torch.tensor([1.0, 0.0]), mask, norm, kernel=kernel)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(value, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(h.grad, torch.tensor([grad]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("norm", "value", "grad"), [
    # diffs from frozen: [1, 0] (1) and [0, 3] (9); total 10 over n = 2 tokens, D = 2
    ("sum_d", 5.0, [[1.0, 0.0], [0.0, 3.0]]),
    ("mean", 2.5, [[0.5, 0.0], [0.0, 1.5]]),
])
def test_rmu_retain_by_hand(kernel: str, norm: str, value: float, grad: list[list[float]]) -> None:
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)
    frozen = torch.tensor([[[0.0, 2.0], [3.0, 1.0]]], requires_grad=True)
    loss = F.rmu_retain(h, frozen, torch.ones(1, 2, dtype=torch.bool), norm, kernel=kernel)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(value, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(h.grad, torch.tensor([grad]), atol=1e-6, rtol=0)
    assert frozen.grad is None  # the frozen activations are a constant


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("norm", ["mean", "sum_d"])
def test_rmu_empty_mask_is_zero_with_graph(kernel: str, norm: str) -> None:
    h = torch.randn(2, 3, 4, requires_grad=True)
    loss = F.rmu_forget(h, torch.ones(4), torch.zeros(2, 3, dtype=torch.bool), norm, kernel=kernel)  # type: ignore[arg-type]
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(h.grad, torch.zeros_like(h))


@pytest.mark.parametrize("norm", ["mean", "sum_d"])
def test_rmu_gradcheck_float64(norm: str) -> None:
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    control = torch.rand(5, generator=g, dtype=torch.float64)
    frozen = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])  # one empty sequence
    assert torch.autograd.gradcheck(lambda x: F.rmu_forget(x, control, mask, norm, kernel="eager"), (h,))  # type: ignore[arg-type]
    assert torch.autograd.gradcheck(lambda x: F.rmu_retain(x, frozen, mask, norm, kernel="eager"), (h,))  # type: ignore[arg-type]


def test_rmu_argument_errors() -> None:
    h, mask = torch.randn(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown RMU kernel 'fast'"):
        F.rmu_forget(h, torch.ones(3), mask, "mean", kernel="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown RMU norm"):
        F.rmu_forget(h, torch.ones(3), mask, "l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control"):
        F.rmu_forget(h, torch.ones(1, 3), mask, "mean")
    with pytest.raises(ValueError, match="h_frozen"):
        F.rmu_retain(h, torch.ones(1, 3, 3), mask, "mean")
    with pytest.raises(ValueError, match="mask"):
        F.rmu_forget(h, torch.ones(3), mask.int(), "mean")
