"""The unlearning baselines GradDiff and SimNPO (issue 21): each functional form against numbers worked out by
hand (the math module alongside), a mutated copy of each form against the same pinned numbers (a sign flip, a
weight swap, a missing length normalisation, delta's sign: each must miss them), the loss classes against a
plain float64 forward of the tiny model, and the recipes' first three logged steps pinned on one rank."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf

from loss_batches import policy_and_reference, text_batch
from mirage_ds.config import ModelConfig, load_config
from mirage_ds.losses import functional as F
from mirage_ds.losses.base import LossContext, model_inputs
from mirage_ds.losses.graddiff import GradDiffLoss
from mirage_ds.losses.registry import build_loss
from mirage_ds.losses.simnpo import SimNPOLoss
from mirage_ds.specs.losses import GradDiffConfig, SimNPOConfig
from test_functional import LABELS, LOGITS, LOGP_0, LOGP_1
from test_pinned_losses import PinnedRun, assert_pinned, print_pinned

# -- GradDiff: -gamma * NLL(forget) + alpha * NLL(retain) -------------------------------------------------------
# Forget: test_functional's sequence (answer log-probs LOGP_0, LOGP_1) and a second one whose only answer token
# is predicted from logits [0, 0, 0] (log-prob -ln 3). The token mean over the batch's three answer tokens:
FORGET_LOGITS = LOGITS + [[[0.0, 0.0, 0.0]] * 3]
FORGET_LABELS = LABELS + [[-100, -100, 1]]
NLL_FORGET = 0.8682768472601999  # -(LOGP_0 + 2 LOGP_1) / 3; the mean of per-sequence means would be 0.92586
# Retain: [0, 0, 0] predicts label 0 (-ln 3), [1, 0, 0] predicts label 1 (-ln(e + 2)).
RETAIN_LOGITS = [[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
RETAIN_LABELS = [[-100, 0, 1]]
NLL_RETAIN = 1.3250285013000802  # (ln 3 + ln(e + 2)) / 2
GAMMA, ALPHA = 0.7, 1.9
GRAD_DIFF = 1.9097603593880121  # -0.7 * NLL_FORGET + 1.9 * NLL_RETAIN


def test_graddiff_hand_numbers_agree_with_math() -> None:
    assert NLL_FORGET == pytest.approx(-(LOGP_0 + 2 * LOGP_1) / 3, abs=1e-15)
    assert NLL_RETAIN == pytest.approx((math.log(3) + math.log(math.e + 2)) / 2, abs=1e-15)
    assert GRAD_DIFF == pytest.approx(-GAMMA * NLL_FORGET + ALPHA * NLL_RETAIN, abs=1e-15)


def _grad_diff_of_logits(form: Callable[..., torch.Tensor], forget_logits: torch.Tensor) -> torch.Tensor:
    forget_nll = F.sft(forget_logits, torch.tensor(FORGET_LABELS))
    retain_nll = F.sft(torch.tensor(RETAIN_LOGITS), torch.tensor(RETAIN_LABELS))
    return form(forget_nll, retain_nll, GAMMA, ALPHA)


def test_grad_diff_by_hand_and_gradient() -> None:
    logits = torch.tensor(FORGET_LOGITS, requires_grad=True)
    loss = _grad_diff_of_logits(F.grad_diff, logits)
    assert loss.item() == pytest.approx(GRAD_DIFF, abs=1e-6)
    loss.backward()
    # Ascent: d L / d z_t = -gamma (softmax(z_t) - onehot(y_{t+1})) / N, N = 3 answer tokens in the batch.
    e = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    p0 = [v / sum(e) for v in e]
    g = -GAMMA / 3
    expected = [[[g * p0[0], g * p0[1], g * (p0[2] - 1)], [g * (1 / 3 - 1), g / 3, g / 3], [0.0, 0.0, 0.0]],
                [[0.0, 0.0, 0.0], [g / 3, g * (1 / 3 - 1), g / 3], [0.0, 0.0, 0.0]]]
    torch.testing.assert_close(logits.grad, torch.tensor(expected), atol=1e-6, rtol=0)


GRAD_DIFF_MUTANTS: dict[str, Callable[..., torch.Tensor]] = {
    "forget_sign_flipped": lambda nll_f, nll_r, gamma, alpha: gamma * nll_f + alpha * nll_r,
    "weights_swapped": lambda nll_f, nll_r, gamma, alpha: -alpha * nll_f + gamma * nll_r,
    "retain_sign_flipped": lambda nll_f, nll_r, gamma, alpha: -gamma * nll_f - alpha * nll_r,
}


@pytest.mark.parametrize("mutant", sorted(GRAD_DIFF_MUTANTS))
def test_grad_diff_mutants_miss_the_pinned_value(mutant: str) -> None:
    got = _grad_diff_of_logits(GRAD_DIFF_MUTANTS[mutant], torch.tensor(FORGET_LOGITS)).item()
    assert abs(got - GRAD_DIFF) > 0.1, (mutant, got)


def test_grad_diff_forget_nll_is_the_batch_token_mean() -> None:
    # open-unlearning reads the HF loss: every answer token of the batch weighs alike, not every sequence.
    forget_nll = F.sft(torch.tensor(FORGET_LOGITS), torch.tensor(FORGET_LABELS))
    per_sequence = F.sequence_logp(torch.tensor(FORGET_LOGITS), torch.tensor(FORGET_LABELS), "mean")
    assert forget_nll.item() == pytest.approx(NLL_FORGET, abs=1e-6)
    assert abs(-per_sequence.mean().item() - NLL_FORGET) > 0.05


# -- GradDiff's retain KL(pi_ref || pi_theta) on the answer positions -------------------------------------------
# Labels [-100, -100, 0, 1]: row 0 predicts a prompt token (masked), rows 1 and 2 answer tokens, row 3 nothing.
# Row 1: the policy is uniform, the reference softmax([0, ln 2, 0]) = [1/4, 1/2, 1/4]; row 2: both [1, 2, 3]
# (KL 0); rows 0 and 3 differ but do not count.
KL_POLICY = [[[5.0, 5.0, 5.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]]
KL_REF = [[[0.0, 0.0, 9.0], [0.0, math.log(2.0), 0.0], [1.0, 2.0, 3.0], [2.0, 0.0, 0.0]]]
KL_LABELS = [[-100, -100, 0, 1]]
# Row 1: 2 * (1/4) ln(3/4) + (1/2) ln(3/2) = (1/2) ln(9/8); averaged over the 2 answer rows.
RETAIN_KL = 0.029445758914095864


def test_retain_kl_by_hand_and_gradient() -> None:
    assert RETAIN_KL == pytest.approx(math.log(9 / 8) / 4, abs=1e-15)
    logits = torch.tensor(KL_POLICY, requires_grad=True)
    ref = torch.tensor(KL_REF, requires_grad=True)
    loss = F.retain_kl(logits, ref, torch.tensor(KL_LABELS))
    assert loss.item() == pytest.approx(RETAIN_KL, abs=1e-6)
    loss.backward()
    # d KL / d z = (softmax(z) - p_ref) / N per answer row; no gradient reaches the reference.
    expected = [[[0.0] * 3, [(1 / 3 - 1 / 4) / 2, (1 / 3 - 1 / 2) / 2, (1 / 3 - 1 / 4) / 2], [0.0] * 3, [0.0] * 3]]
    torch.testing.assert_close(logits.grad, torch.tensor(expected), atol=1e-6, rtol=0)
    assert ref.grad is None


def _plain_kl(direction: str, positions: str) -> Callable[..., torch.Tensor]:
    def kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if positions == "answer":
            rows = [x[:, :-1][labels[:, 1:] != -100] for x in (logits, ref_logits)]
        else:  # open-unlearning's compute_kl_divergence: every position of the batch
            rows = [x.flatten(0, 1) for x in (logits, ref_logits)]
        logp, ref_logp = (torch.log_softmax(r.double(), -1) for r in rows)
        target, source = (ref_logp, logp) if direction == "ref||theta" else (logp, ref_logp)
        return nnf.kl_div(source, target, log_target=True, reduction="batchmean")
    return kl


RETAIN_KL_MUTANTS = {"reverse_direction": _plain_kl("theta||ref", "answer"),
                     "every_position": _plain_kl("ref||theta", "all")}


@pytest.mark.parametrize("mutant", sorted(RETAIN_KL_MUTANTS))
def test_retain_kl_mutants_miss_the_pinned_value(mutant: str) -> None:
    assert _plain_kl("ref||theta", "answer")(*map(torch.tensor, (KL_POLICY, KL_REF, KL_LABELS))).item() == \
        pytest.approx(RETAIN_KL, abs=1e-6)  # the mutants' unmutated twin is right
    got = RETAIN_KL_MUTANTS[mutant](*map(torch.tensor, (KL_POLICY, KL_REF, KL_LABELS))).item()
    assert abs(got - RETAIN_KL) > 1e-4, (mutant, got)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_retain_kl_matches_kl_div_and_gradchecks(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    ref = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[0, :2] = -100
    want = _plain_kl("ref||theta", "answer")(base.to(dtype), ref.to(dtype), labels)
    got = F.retain_kl(base.to(dtype), ref.to(dtype), labels)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda x: F.retain_kl(x, ref, labels, chunk_elements=22),
                                    (base.clone().requires_grad_(),))
    empty = F.retain_kl(base.requires_grad_(), ref, torch.full((2, 6), -100))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="ref_logits"):
        F.retain_kl(base, ref[:1], labels)


# -- SimNPO: -(2/beta) log sigmoid(-(beta/|y|) log pi - delta), batch mean -------------------------------------
SIM_LOGP = [-0.6, -1.2]  # per-sequence sums of answer log-probs
SIM_LENGTHS = [3, 2]  # -> per-token means [-0.2, -0.6]
SIM_BETA, SIM_DELTA = 2.5, 0.25
# Arguments of log sigmoid: -2.5 * [-0.2, -0.6] - 0.25 = [0.25, 1.25]; -(2/beta) log sigmoid(a) = 0.8 ln(1 + e^-a).
SIMNPO = 0.3311474004896866  # 0.8 * (0.5759394198788436 + 0.2519290813453729) / 2


def _simnpo_args() -> tuple[torch.Tensor, torch.Tensor, float, float]:
    return torch.tensor(SIM_LOGP, dtype=torch.float64), torch.tensor(SIM_LENGTHS), SIM_BETA, SIM_DELTA


def test_simnpo_by_hand_and_gradient() -> None:
    assert SIMNPO == pytest.approx(0.8 * (math.log1p(math.exp(-0.25)) + math.log1p(math.exp(-1.25))) / 2, abs=1e-15)
    logp, lengths, beta, delta = _simnpo_args()
    logp.requires_grad_()
    loss = F.simnpo(logp, lengths, beta, delta)
    assert loss.item() == pytest.approx(SIMNPO, abs=1e-12)
    loss.backward()
    # dL / d logp_b = (2 / B) sigmoid(-a_b) / |y_b|: the length divides the gradient too.
    expected = [1 / (1 + math.exp(0.25)) / 3, 1 / (1 + math.exp(1.25)) / 2]
    torch.testing.assert_close(logp.grad, torch.tensor(expected, dtype=torch.float64))
    # At log pi = 0 with delta = 0 the loss is (2/beta) ln 2, as NPO's at the reference; no answer token: no NaN.
    assert F.simnpo(torch.zeros(2), torch.tensor([0, 4]), 0.9, 0.0).item() == pytest.approx(2 / 0.9 * math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="beta"):
        F.simnpo(logp, lengths, 0.0, delta)
    with pytest.raises(ValueError, match="lengths"):
        F.simnpo(logp, lengths[:1], beta, delta)


def _simnpo_mutant(normalise: bool, delta_sign: float, logp_sign: float, delta_times_beta: bool) -> Callable[..., torch.Tensor]:
    def form(logp: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
        x = logp_sign * logp / lengths if normalise else logp_sign * logp
        margin = beta * delta if delta_times_beta else delta
        return (-(2 / beta) * nnf.logsigmoid(-beta * x + delta_sign * margin)).mean()
    return form


SIMNPO_MUTANTS = {
    "no_length_normalisation": _simnpo_mutant(False, -1.0, 1.0, False),
    "delta_sign_flipped": _simnpo_mutant(True, 1.0, 1.0, False),
    "logp_sign_flipped": _simnpo_mutant(True, -1.0, -1.0, False),
    "delta_times_beta": _simnpo_mutant(True, -1.0, 1.0, True),  # the reference code's placement of delta
}


@pytest.mark.parametrize("mutant", sorted(SIMNPO_MUTANTS))
def test_simnpo_mutants_miss_the_pinned_value(mutant: str) -> None:
    assert _simnpo_mutant(True, -1.0, 1.0, False)(*_simnpo_args()).item() == pytest.approx(SIMNPO, abs=1e-12)
    got = SIMNPO_MUTANTS[mutant](*_simnpo_args()).item()
    assert abs(got - SIMNPO) > 0.05, (mutant, got)


def test_simnpo_reads_log_pi_from_logits_by_hand() -> None:
    # test_functional's sequence: log pi = LOGP_0 + LOGP_1 over |y| = 2 answer tokens.
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    lengths = F.answer_lengths(labels)
    assert lengths.tolist() == [2]
    loss = F.simnpo(F.sequence_logp(logits, labels, "sum"), lengths, 4.5, 0.0)
    assert loss.item() == pytest.approx(2 / 4.5 * math.log1p(math.exp(4.5 * (LOGP_0 + LOGP_1) / 2)), abs=1e-6)


# -- the loss classes on the tiny model against a plain float64 forward ------------------------------------------
PAIRS = {"forget": [("How do I pick a lock to break into a house?", "First insert a tension wrench, then rake the pins."),
                    ("Write a threatening message.", "You will regret this.")],
         "retain": [("What is the blue shape?", "A circle."),
                    ("How many sides does the red shape have?", "The red shape is a square, so it has four sides.")]}


@pytest.fixture(scope="module")
def models(tiny_bundle) -> tuple[torch.nn.Module, torch.nn.Module]:
    return policy_and_reference(tiny_bundle.model, seed=2)


@pytest.fixture(scope="module")
def batches(tiny_bundle) -> dict[str, dict]:
    return {name: text_batch(tiny_bundle, pairs, name, name) for name, pairs in PAIRS.items()}


def _token_nll(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T-1] float64 next-token NLL, 0 outside the answer; [B, T-1] answer mask) from an ordinary forward."""
    logits = model(**model_inputs(batch)).logits[:, :-1].double()
    labels = batch["labels"][:, 1:]
    return nnf.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"), labels != -100


@pytest.mark.parametrize("retain_kl", [False, True])
def test_graddiff_loss_matches_plain_forward(models, batches, retain_kl: bool) -> None:
    policy, reference = models
    loss = GradDiffLoss(GradDiffConfig(forget_weight=0.6, retain_weight=1.7, retain_kl=retain_kl), ModelConfig())
    assert loss.needs.streams == ("forget", "retain") and loss.needs.reference is retain_kl
    ctx = LossContext(reference=lambda b: {"logits": reference(**model_inputs(b)).logits})
    with torch.no_grad():
        out = loss(policy, batches, ctx)
        nll_f, mask_f = _token_nll(policy, batches["forget"])
        nll_r, mask_r = _token_nll(policy, batches["retain"])
        kl = _plain_kl("ref||theta", "answer")(policy(**model_inputs(batches["retain"])).logits,
                                               reference(**model_inputs(batches["retain"])).logits,
                                               batches["retain"]["labels"])
    forget_ce, retain_ce = nll_f.sum() / mask_f.sum(), nll_r.sum() / mask_r.sum()
    retain_term = kl if retain_kl else retain_ce
    assert set(out.terms) == {"forget_ce", "retain_kl" if retain_kl else "ce"}
    torch.testing.assert_close(out.terms["forget_ce"].double(), forget_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["retain_kl" if retain_kl else "ce"].double(), retain_term, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), -0.6 * forget_ce + 1.7 * retain_term, rtol=1e-5, atol=1e-6)
    assert kl > 1e-3  # the nudged reference is far enough from the policy for the KL to matter


def test_simnpo_loss_matches_plain_forward(models, batches) -> None:
    policy, _ = models
    cfg = SimNPOConfig(beta=2.0, delta=0.3, forget_weight=0.4, retain_ce_weight=1.3)
    loss = SimNPOLoss(cfg, ModelConfig())
    assert loss.needs.streams == ("forget", "retain") and not loss.needs.reference
    with torch.no_grad():
        out = loss(policy, batches, LossContext())
        nll_f, mask_f = _token_nll(policy, batches["forget"])
        nll_r, mask_r = _token_nll(policy, batches["retain"])
    per_token = -nll_f.sum(1) / mask_f.sum(1)
    assert mask_f.sum(1).unique().numel() == 2  # answers of different lengths: the normalisation shows
    forget = (-(2 / 2.0) * nnf.logsigmoid(-2.0 * per_token - 0.3)).mean()
    ce = nll_r.sum() / mask_r.sum()
    torch.testing.assert_close(out.terms["forget"].double(), forget, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["ce"].double(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["logp_forget"].double(), per_token.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), 0.4 * forget + 1.3 * ce, rtol=1e-5, atol=1e-6)


# -- config, presets and recipes ---------------------------------------------------------------------------------
def test_presets_and_recipes() -> None:
    # open-unlearning's configs/trainer/GradDiff.yaml and SimNPO.yaml (docstrings of losses/graddiff.py, simnpo.py).
    assert GradDiffConfig() == GradDiffConfig(forget_weight=1.0, retain_weight=1.0, retain_kl=False)
    assert SimNPOConfig() == SimNPOConfig(beta=4.5, delta=0.0, forget_weight=0.125, retain_ce_weight=1.0)
    assert SimNPOConfig(beta=2.5).delta == 0.0  # a key left out still comes from the preset
    for name in ("graddiff_full", "graddiff_lora", "simnpo_full", "simnpo_lora"):
        cfg = load_config(name)
        assert (cfg.model.lora is not None) is name.endswith("_lora")
        assert type(build_loss(cfg.loss, cfg.model)).__name__ == {"graddiff": "GradDiffLoss", "simnpo": "SimNPOLoss"}[cfg.loss.name]
    assert build_loss(load_config("graddiff_lora", ["loss.retain_kl=true"]).loss, ModelConfig()).needs.reference


# -- the recipes' first three steps on one rank (tests/test_pinned_losses.py's method) ---------------------------
# A run's name -> (recipe, its overrides, ranks). simnpo_full's preset beta 4.5 saturates on the untrained tiny model:
# its per-token log-prob is about -6.4, so log sigmoid(4.5 * 6.4) is ~1e-13, below any tolerance, and a flipped
# delta or a lost normalisation would pass. Beta 0.5 and delta 2 put the argument near 1.2, where both show.
# graddiff_full_kl is the one run of the retain KL through the loop's reference (a second ZeRO-3 engine).
RUNS: dict[str, PinnedRun] = {
    "graddiff_full": ("graddiff_full", (), 1),
    "graddiff_full_kl": ("graddiff_full", ("loss.retain_kl=true",), 1),
    "simnpo_full": ("simnpo_full", ("loss.beta=0.5", "loss.delta=2.0"), 1),
}
PINNED: dict[str, dict[str, list[float]]] = {
    "graddiff_full": {
        "train/loss": [0.003014087677001953, -0.019043922424316406, -0.4525618553161621],
        "train/forget_ce": [6.375852584838867, 6.444718837738037, 6.507592678070068],
        "train/ce": [6.378866672515869, 6.425674915313721, 6.055030822753906],
    },
    "graddiff_full_kl": {
        "train/loss": [-6.375852584838867, -6.552711486816406, -6.690375804901123],
        "train/forget_ce": [6.375852584838867, 6.563235759735107, 6.70380163192749],
        "train/retain_kl": [-2.1504420999463036e-07, 0.010524153709411621, 0.013425827026367188],
    },
    "simnpo_full": {
        "train/loss": [6.511914253234863, 6.485297203063965, 6.035830497741699],
        "train/forget": [1.0643788576126099, 1.1253904104232788, 1.1377086639404297],
        "train/ce": [6.378866672515869, 6.344623565673828, 5.893616676330566],
        "train/logp_forget": [-6.375815391540527, -6.248416900634766, -6.223392009735107],
    },
}


@pytest.mark.distributed
@pytest.mark.parametrize("run", sorted(PINNED))
def test_baseline_recipe_losses_match_pinned(run: str, tmp_path: Path, synthetic_corpus) -> None:
    assert_pinned(run, RUNS[run], tmp_path / run, PINNED[run])


if __name__ == "__main__":
    # Regenerate PINNED only when a change of numbers is intended (tests/test_pinned_losses.py says when):
    #     MIRAGE_CACHE=.cache-test .venv/bin/python tests/test_baselines.py
    print_pinned(RUNS)
