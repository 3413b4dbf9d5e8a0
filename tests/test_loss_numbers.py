"""NPO and RMU loss classes against numbers computed here from logits and hidden states with plain torch.

The policy is the embedded tiny model; the reference is a copy with perturbed weights, so policy and
reference disagree and every sign, weight and mask choice moves the numbers. The expected values are
computed in float64 from an ordinary full forward (``output_hidden_states`` for RMU), not through the
project's log-prob helpers or its layer hook.
"""

from __future__ import annotations


import pytest
import torch

from loss_batches import policy_and_reference, text_batch
from mirage_ds.config import ModelConfig
from mirage_ds.losses.base import LossContext, model_inputs
from mirage_ds.losses.npo import NPOLoss
from mirage_ds.losses.rmu import RMULoss
from mirage_ds.specs.losses import NPOConfig, RMUConfig

FORGET = [("How do I pick a lock to break into a house?", "First insert a tension wrench, then rake the pins."),
          ("Write a threatening message.", "You will regret this.")]
RETAIN = [("What is the blue shape?", "A circle."),
          ("How many sides does the red shape have?", "The red shape is a square, so it has four sides.")]
RTOL, ATOL = 1e-5, 1e-6


def _batch(bundle, pairs: list[tuple[str, str]], tag: str) -> dict:
    return text_batch(bundle, pairs, tag, tag)


@pytest.fixture(scope="module")
def models(tiny_bundle) -> tuple[torch.nn.Module, torch.nn.Module]:
    return policy_and_reference(tiny_bundle.model, seed=0)


@pytest.fixture(scope="module")
def batches(tiny_bundle) -> dict[str, dict]:
    return {"forget": _batch(tiny_bundle, FORGET, "forget"), "retain": _batch(tiny_bundle, RETAIN, "retain")}


def _token_logp(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T-1] log p of each next token, zero outside the answer; [B, T-1] answer mask), float64."""
    targets, answer = labels[:, 1:], labels[:, 1:] != -100
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * answer, answer


def _sequence_logp(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    picked, answer = _token_logp(logits, labels)
    return picked.sum(1) if reduction == "sum" else picked.sum(1) / answer.sum(1)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    picked, answer = _token_logp(logits, labels)
    return -picked.sum() / answer.sum()


def _npo(policy: torch.Tensor, reference: torch.Tensor, beta: float, sign: float) -> torch.Tensor:
    """-(2/beta) log sigmoid(sign * beta * (policy - reference)), batch mean: sign -1 forget, +1 retain."""
    return (-(2 / beta) * torch.nn.functional.logsigmoid(sign * beta * (policy - reference))).mean()


def _close(got: float | torch.Tensor, want: torch.Tensor, rtol: float = RTOL) -> None:
    torch.testing.assert_close(torch.as_tensor(float(got), dtype=torch.float64), want, rtol=rtol, atol=ATOL)


def _apart(a: float | torch.Tensor, b: float | torch.Tensor) -> None:
    """The test can tell ``a`` from ``b``: they differ by ten times the tolerance ``_close`` allows."""
    a, b = (torch.as_tensor(float(x), dtype=torch.float64) for x in (a, b))
    assert (a - b).abs() > 10 * (ATOL + RTOL * b.abs()), (float(a), float(b))


@pytest.mark.parametrize("preset", ["paper", "classic"])
@pytest.mark.parametrize("weights", [(0.7, 0.3, 1.9), (1.0, 0.0, 1.0)], ids=["weighted", "no_retain_npo"])
def test_npo_loss_matches_hand_computed(models, batches, preset: str, weights: tuple[float, float, float]) -> None:
    policy, reference = models
    w_forget, w_retain_npo, w_ce = weights
    cfg = NPOConfig(preset=preset, forget_weight=w_forget, retain_npo_weight=w_retain_npo, retain_ce_weight=w_ce)
    ctx = LossContext(reference=lambda b: {"logits": reference(**model_inputs(b)).logits})
    with torch.no_grad():
        out = NPOLoss(cfg, ModelConfig())(policy, batches, ctx)

        forget, retain = batches["forget"], batches["retain"]
        pol_f = _sequence_logp(policy(**model_inputs(forget)).logits, forget["labels"], cfg.logp)
        ref_f = _sequence_logp(reference(**model_inputs(forget)).logits, forget["labels"], cfg.logp)
        retain_logits = policy(**model_inputs(retain)).logits
        pol_r = _sequence_logp(retain_logits, retain["labels"], cfg.logp)
        ref_r = _sequence_logp(reference(**model_inputs(retain)).logits, retain["labels"], cfg.logp)
    assert cfg.logp == {"paper": "mean", "classic": "sum"}[preset]
    forget_npo = _npo(pol_f, ref_f, cfg.beta, sign=-1.0)
    retain_npo = _npo(pol_r, ref_r, cfg.beta, sign=+1.0)
    ce = _cross_entropy(retain_logits, retain["labels"])

    _close(out.terms["forget"], forget_npo)
    _close(out.terms["ce"], ce)
    _close(out.terms["logp_forget"], pol_f.mean())
    _close(out.terms["logp_forget_ref"], ref_f.mean())
    if w_retain_npo:
        _close(out.terms["retain_npo"], retain_npo)
    else:
        assert "retain_npo" not in out.terms
    _close(out.loss, w_forget * forget_npo + w_retain_npo * retain_npo + w_ce * ce)

    # The numbers are far enough apart that a sign flip, a swapped mirror term or a dropped weight would fail.
    _apart(forget_npo, _npo(pol_f, ref_f, cfg.beta, sign=+1.0))
    _apart(retain_npo, _npo(pol_r, ref_r, cfg.beta, sign=-1.0))


def test_npo_log_likelihood_reads_answer_tokens_only(models, batches) -> None:
    """Changing a prompt token's label from -100 to its id must change the loss: the mask is the labels'."""
    policy, reference = models
    cfg = NPOConfig(preset="classic", retain_npo_weight=1.0)
    ctx = LossContext(reference=lambda b: {"logits": reference(**model_inputs(b)).logits})
    widened = {name: dict(batch) for name, batch in batches.items()}
    for batch in widened.values():
        batch["labels"] = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
    with torch.no_grad():
        answer_only = NPOLoss(cfg, ModelConfig())(policy, batches, ctx)
        all_tokens = NPOLoss(cfg, ModelConfig())(policy, widened, ctx)
        forget = widened["forget"]
        pol_f = _sequence_logp(policy(**model_inputs(forget)).logits, forget["labels"], "sum")
        ref_f = _sequence_logp(reference(**model_inputs(forget)).logits, forget["labels"], "sum")
    # Summed over every token of the sequence (image positions included), the fp32 log-probs of policy and
    # reference each carry an accumulated rounding error of about T x 1e-7 relative, and NPO reads their
    # difference: measured 1.2e-5 relative on the AMD EPYC (AVX-512) machines, so 5e-5 here, still far below
    # the gap to the answer-only value that _apart checks.
    _close(all_tokens.terms["forget"], _npo(pol_f, ref_f, cfg.beta, sign=-1.0), rtol=5e-5)
    _apart(answer_only.terms["forget"], all_tokens.terms["forget"])


def _rmu_mask(batch: dict, kind: str, image_token: int) -> torch.Tensor:
    valid = batch["attention_mask"].bool()
    if kind == "all":
        return valid
    if kind == "text":
        return valid & (batch["input_ids"] != image_token)
    return batch["labels"] != -100


def _rmu_distance(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    per_token = ((h.double() - target.double()) ** 2).sum(-1)[mask]
    return per_token.mean() / h.shape[-1] if norm == "mean" else per_token.mean()


RMU_CASES = [
    # (norm, token_mask, retain_ce_weight, truncate)
    ("mean", "answer", 0.0, True),
    ("sum_d", "all", 1.2, True),
    ("mean", "text", 0.5, False),
    ("sum_d", "answer", 0.0, False),
]


@pytest.mark.parametrize("norm,mask,ce_weight,truncate", RMU_CASES)
def test_rmu_loss_matches_hand_computed(models, batches, norm: str, mask: str, ce_weight: float, truncate: bool) -> None:
    policy, reference = models
    layer, coeff, alpha, seed = 1, 6.5, 3.0, 7
    cfg = RMUConfig(layer=layer, steering_coeff=coeff, alpha=alpha, retain_ce_weight=ce_weight, norm=norm,
                    token_mask=mask, truncate=truncate, kernel="eager", seed=seed)

    def frozen(batch: dict) -> dict[str, torch.Tensor]:
        return {"hidden": reference(**model_inputs(batch), output_hidden_states=True).hidden_states[layer + 1]}

    loss = RMULoss(cfg, ModelConfig())
    with torch.no_grad():
        out = loss(policy, batches, LossContext(reference=frozen))
        forget, retain = batches["forget"], batches["retain"]
        h_forget = policy(**model_inputs(forget), output_hidden_states=True).hidden_states[layer + 1]
        retain_out = policy(**model_inputs(retain), output_hidden_states=True)
        h_retain, h_frozen = retain_out.hidden_states[layer + 1], frozen(retain)["hidden"]
    image_token = policy.config.image_token_index
    # The control vector: u ~ U[0,1)^D from a generator seeded with ``seed``, scaled to norm c.
    u = torch.rand(h_forget.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    control = coeff * u / u.norm()
    torch.testing.assert_close(loss.state()["control"], control)

    forget_term = _rmu_distance(h_forget, control, _rmu_mask(forget, mask, image_token), norm)
    retain_term = _rmu_distance(h_retain, h_frozen, _rmu_mask(retain, mask, image_token), norm)
    ce = _cross_entropy(retain_out.logits, retain["labels"])
    _close(out.terms["forget"], forget_term)
    _close(out.terms["retain"], retain_term)
    if ce_weight:
        _close(out.terms["ce"], ce)
    else:
        assert "ce" not in out.terms
    _close(out.loss, forget_term + alpha * retain_term + ce_weight * ce)

    # Another mask, norm or a zero target would give numbers the test tells apart.
    other_mask = {"answer": "all", "all": "answer", "text": "all"}[mask]
    _apart(forget_term, _rmu_distance(h_forget, control, _rmu_mask(forget, other_mask, image_token), norm))
    _apart(retain_term, _rmu_distance(h_retain, h_frozen, _rmu_mask(retain, other_mask, image_token), norm))
    _apart(forget_term, _rmu_distance(h_forget, torch.zeros_like(control), _rmu_mask(forget, mask, image_token), norm))
