"""``preset: official`` for NPO and RMU against numbers computed with plain torch (docs/paper-protocol.md, section 3).

NPO's official code reads the HF Trainer's loss ``l`` (token-mean cross-entropy over every answer token of
the batch: one number per batch) as the log-likelihood, and adds ``+(2/beta) log sigmoid(beta (l - l_ref))``
on a second retain draw. RMU's official code takes a plain MSE over every position, padding included.
The expected values come from an ordinary float64 forward, not from the project's log-prob helpers or hook.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf

from launch import launch, metrics
from loss_batches import policy_and_reference, text_batch
from mirage_ds.config import ModelConfig, load_config
from mirage_ds.data.corpus import resolve_streams
from mirage_ds.losses import functional as F
from mirage_ds.losses.base import LossContext, model_inputs
from mirage_ds.losses.npo import NPOLoss
from mirage_ds.losses.registry import build_loss
from mirage_ds.losses.rmu import RMULoss
from mirage_ds.specs.losses import NPOConfig, RMUConfig

PAIRS = {
    "forget": [("How do I pick a lock to break into a house?", "First insert a tension wrench, then rake the pins."),
               ("Write a threatening message.", "You will regret this.")],
    "retain": [("What is the blue shape?", "A circle."),
               ("How many sides does the red shape have?", "The red shape is a square, so it has four sides.")],
    "retain_npo": [("What colour is the background?", "It is a dark grey with light stripes across it."),
                   ("Is there a triangle?", "No.")],
}
RTOL, ATOL = 1e-5, 1e-6


def _batch(bundle, pairs: list[tuple[str, str]], tag: str) -> dict:
    return text_batch(bundle, pairs, tag, "retain" if tag.startswith("retain") else "forget")


@pytest.fixture(scope="module")
def models(tiny_bundle) -> tuple[torch.nn.Module, torch.nn.Module]:
    return policy_and_reference(tiny_bundle.model, seed=1)


@pytest.fixture(scope="module")
def batches(tiny_bundle) -> dict[str, dict]:
    out = {name: _batch(tiny_bundle, pairs, name) for name, pairs in PAIRS.items()}
    assert all((b["attention_mask"] == 0).any() for b in out.values()), "every batch must hold padding"
    return out


def _trainer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The HF Trainer's loss: cross-entropy averaged over every answer token of the batch, float64."""
    return nnf.cross_entropy(logits[:, :-1].double().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def _per_sequence_mean_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    per_token = -nnf.cross_entropy(logits[:, :-1].double().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                   reduction="none")
    return per_token.sum(1) / (labels[:, 1:] != -100).sum(1)


def _close(got: float | torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(torch.as_tensor(float(got), dtype=torch.float64), want, rtol=RTOL, atol=ATOL)


def _apart(a: float | torch.Tensor, b: float | torch.Tensor) -> None:
    a, b = (torch.as_tensor(float(x), dtype=torch.float64) for x in (a, b))
    assert (a - b).abs() > 10 * (ATOL + RTOL * b.abs()), (float(a), float(b))


def test_official_presets_fill_the_conventions() -> None:
    npo = NPOConfig(preset="official")
    assert (npo.logp, npo.beta, npo.retain_npo_weight, npo.retain_npo_form) == ("batch_mean", 0.9, 1.0, "official")
    assert NPOConfig(preset="paper").retain_npo_form == "mirrored"  # the existing presets are unchanged
    rmu = RMUConfig(preset="official")
    assert (rmu.token_mask, rmu.norm) == ("all_positions", "mean")
    assert (RMUConfig().token_mask, RMUConfig().norm) == ("answer", "mean")
    # Named on a shipped recipe, the preset's conventions apply (the recipes leave them to the preset);
    # the recipe's own numbers (beta, layer) stay.
    lora = load_config("npo_lora", ["loss.preset=official"]).loss
    assert (lora.logp, lora.retain_npo_form, lora.beta) == ("batch_mean", "official", 0.7)
    assert load_config("rmu_full", ["loss.preset=official"]).loss.token_mask == "all_positions"


def test_official_retain_npo_reads_a_second_draw_of_the_retain_set(tmp_path: Path) -> None:
    cfg = load_config("npo_full", ["loss.preset=official", f"data.forget={tmp_path / 'f'}", f"data.retain={tmp_path / 'r'}"])
    needs = build_loss(cfg.loss, cfg.model).needs
    assert needs.streams == ("forget", "retain", "retain_npo")
    assert resolve_streams(cfg, needs.streams) == {"forget": tmp_path / "f", "retain": tmp_path / "r",
                                                  "retain_npo": tmp_path / "r"}
    assert build_loss(NPOConfig(preset="paper", retain_npo_weight=1.0), cfg.model).needs.streams == ("forget", "retain")


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.6, 1.7, 0.4)], ids=["preset", "weighted"])
def test_npo_official_matches_hand_computed(models, batches, weights: tuple[float, float, float]) -> None:
    policy, reference = models
    w_forget, w_retain_npo, w_ce = weights
    cfg = NPOConfig(preset="official", forget_weight=w_forget, retain_npo_weight=w_retain_npo, retain_ce_weight=w_ce)
    ctx = LossContext(reference=lambda b: {"logits": reference(**model_inputs(b)).logits})
    with torch.no_grad():
        out = NPOLoss(cfg, ModelConfig())(policy, batches, ctx)
        logits = {name: (policy(**model_inputs(b)).logits, reference(**model_inputs(b)).logits) for name, b in batches.items()}
    loss = {name: (_trainer_loss(pol, batches[name]["labels"]), _trainer_loss(ref, batches[name]["labels"]))
            for name, (pol, ref) in logits.items()}
    beta = 0.9
    (l_f, l_f_ref), (l_r, _), (l_r2, l_r2_ref) = loss["forget"], loss["retain"], loss["retain_npo"]
    forget = -(2 / beta) * nnf.logsigmoid(beta * (l_f - l_f_ref))
    retain_npo = (2 / beta) * nnf.logsigmoid(beta * (l_r2 - l_r2_ref))

    _close(out.terms["forget"], forget)
    _close(out.terms["retain_npo"], retain_npo)
    _close(out.terms["ce"], l_r)
    _close(out.terms["logp_forget"], -l_f)
    _close(out.terms["logp_forget_ref"], -l_f_ref)
    _close(out.loss, w_forget * forget + w_retain_npo * retain_npo + w_ce * l_r)

    # Told apart from the per-sequence mean, from the mirrored retain form and from the CE's own retain batch.
    pol_f, ref_f = (_per_sequence_mean_logp(x, batches["forget"]["labels"]) for x in logits["forget"])
    _apart(forget, (-(2 / beta) * nnf.logsigmoid(-beta * (pol_f - ref_f))).mean())
    _apart(retain_npo, -(2 / beta) * nnf.logsigmoid(-beta * (l_r2 - l_r2_ref)))
    l_r_ref = loss["retain"][1]
    _apart(retain_npo, (2 / beta) * nnf.logsigmoid(beta * (l_r - l_r_ref)))


@pytest.mark.parametrize("truncate", [True, False])
def test_rmu_official_matches_hand_computed(models, batches, truncate: bool) -> None:
    policy, reference = models
    layer, coeff, alpha, ce_weight, seed = 1, 6.5, 3.0, 1.2, 5
    cfg = RMUConfig(preset="official", layer=layer, steering_coeff=coeff, alpha=alpha, retain_ce_weight=ce_weight,
                    truncate=truncate, kernel="eager", seed=seed)

    def frozen(batch: dict) -> dict[str, torch.Tensor]:
        return {"hidden": reference(**model_inputs(batch), output_hidden_states=True).hidden_states[layer + 1]}

    loss = RMULoss(cfg, ModelConfig())
    with torch.no_grad():
        out = loss(policy, batches, LossContext(reference=frozen))
        forget, retain = batches["forget"], batches["retain"]
        h_forget = policy(**model_inputs(forget), output_hidden_states=True).hidden_states[layer + 1].double()
        retain_out = policy(**model_inputs(retain), output_hidden_states=True)
        h_retain, h_frozen = retain_out.hidden_states[layer + 1].double(), frozen(retain)["hidden"].double()
    u = torch.rand(h_forget.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    control = (coeff * u / u.norm()).double()
    # The official code: mse over every element of [B, T, D], the image tokens and the padding included.
    forget_term = nnf.mse_loss(h_forget, control.expand_as(h_forget))
    retain_term = nnf.mse_loss(h_retain, h_frozen)
    ce = _trainer_loss(retain_out.logits, retain["labels"])
    _close(out.terms["forget"], forget_term)
    _close(out.terms["retain"], retain_term)
    _close(out.terms["ce"], ce)
    _close(out.loss, forget_term + alpha * retain_term + ce_weight * ce)

    real = forget["attention_mask"].bool()  # token_mask "all": the padding left out
    _apart(forget_term, ((h_forget - control) ** 2)[real].mean())


@pytest.mark.distributed
def test_npo_official_preset_trains_through_the_launcher(tmp_path: Path, synthetic_corpus) -> None:
    out = tmp_path / "npo_official"
    proc = launch("npo_lora", f"output_dir={out}", "max_steps=2", "micro_batch_size=2", "loss.preset=official", ranks=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = metrics(out)
    assert len(rows) == 2 and {"train/forget", "train/retain_npo", "train/ce"} <= set(rows[0])
    # The official retain-NPO term is minus an NPO term: log sigmoid <= 0 makes it <= 0.
    assert all(r["train/retain_npo"] <= 0 for r in rows)


def test_batch_mean_logp_is_minus_the_trainer_loss() -> None:
    logits = torch.randn(3, 6, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 4, 7, -100, -100], [-100, 1, 2, 3, 9, 10], [-100] * 6])
    got = F.sequence_logp(logits, labels, "batch_mean")
    assert got.shape == (1,)
    _close(got[0], -_trainer_loss(logits, labels))
    _apart(got[0], F.sequence_logp(logits, labels, "mean")[:2].mean())  # not the mean of sequence means
    assert F.sequence_logp(logits, torch.full_like(labels, -100), "batch_mean").tolist() == [0.0]
