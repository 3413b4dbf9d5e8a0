"""Pinned loss values: sft_lora on 1 rank, the four unlearning Table 1 recipes on 2 ranks (their runs are also
the smoke runs of tests/test_recipes_smoke.py, checked alike), fp32, 3 steps of micro-batch 2 through the real
launcher.

Every logged loss term of every step must match the numbers below (as torchtune pins its recipe tests),
so a sign flip, a wrong weight, a changed mask or reduction, or a data-order change fails here. On 2 ranks a
term is the mean of both ranks' (the loop's one all-reduce), each rank on its own shards. Step 1 has
policy == reference (NPO forget == retain_npo == (2/beta) log 2, RMU retain == 0); steps 2 and 3 are where
the reference and the policy part, so a swapped or flipped NPO term shows there.

Two runs on one machine gave bitwise-equal values. The tolerance (rel 1e-4) leaves room for another
CPU's kernels (vector width changes fp32 summation order); a real change moves a term far more.

Regenerate only when a change of numbers is intended (a new prompt template, a new synthetic corpus), and
name that change in the commit:
    MIRAGE_CACHE=.cache-test .venv/bin/python tests/test_pinned_losses.py
and paste the printed dict over PINNED.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from export_checks import load_export
from launch import launch, metrics

pytestmark = pytest.mark.distributed

PINNED: dict[str, dict[str, list[float]]] = {
    "sft_lora": {
        "train/loss": [6.39111328125, 6.352524757385254, 6.297416687011719],
        "train/ce": [6.39111328125, 6.352524757385254, 6.297416687011719],
    },
    "npo_lora": {
        "train/loss": [10.367514610290527, 9.131740093231201, 8.929272651672363],
        "train/forget": [1.9804205894470215, 1.957557201385498, 1.9450634121894836],
        "train/ce": [6.406672954559326, 5.7520527839660645, 5.661949157714844],
        "train/logp_forget": [-6.347944974899292, -6.38593602180481, -6.413082122802734],
        "train/logp_forget_ref": [-6.347944974899292, -6.362980127334595, -6.377487659454346],
        "train/retain_npo": [1.9804205894470215, 1.4221301078796387, 1.3222599625587463],
    },
    "npo_full": {
        "train/loss": [9.487327575683594, 8.13770866394043, 7.99845027923584],
        "train/forget": [1.5403271913528442, 1.501824676990509, 1.4844672679901123],
        "train/ce": [6.406672954559326, 5.683002948760986, 5.625074625015259],
        "train/logp_forget": [-6.347944974899292, -6.401824474334717, -6.4341042041778564],
        "train/logp_forget_ref": [-6.347944974899292, -6.362980127334595, -6.377487659454346],
        "train/retain_npo": [1.5403271913528442, 0.9528808891773224, 0.8889082074165344],
    },
    "rmu_lora": {
        "train/loss": [8.468101978302002, 7.563800811767578, 7.395621061325073],
        "train/forget": [0.7800943553447723, 0.7782635390758514, 0.7753376066684723],
        "train/retain": [0.0, 0.0017946340376511216, 0.004650074057281017],
        "train/ce": [6.406672954559326, 5.654614210128784, 5.516902923583984],
    },
    "rmu_full": {
        "train/loss": [0.7800943553447723, 0.7553089261054993, 0.7417339980602264],
        "train/forget": [0.7800943553447723, 0.7551198601722717, 0.7414156794548035],
        "train/retain": [0.0, 0.0001890713392640464, 0.00031830208899918944],
    },
}
RTOL, ATOL = 1e-4, 1e-6
# Logged under train/ by the loop, not by the loss: the schedule and the count of skipped (non-finite) steps.
NOT_LOSS_TERMS = {"train/lr", "train/skipped"}
# A pinned run: (recipe, its overrides, ranks).
PinnedRun = tuple[str, tuple[str, ...], int]
# The unlearning recipes on 2 ranks: their reference model and hooks are distributed special cases. rmu_full at
# layer 2, so that its parameter check below has layers 0..2 to train.
RUNS: dict[str, PinnedRun] = {
    "sft_lora": ("sft_lora", (), 1),
    "npo_lora": ("npo_lora", (), 2),
    "npo_full": ("npo_full", (), 2),
    "rmu_lora": ("rmu_lora", (), 2),
    "rmu_full": ("rmu_full", ("loss.layer=2",), 2),
}


def loss_terms(run: PinnedRun, out: Path) -> dict[str, list[float]]:
    """Run ``run`` for 3 steps; each logged loss term (``train/*``, total included) per step."""
    recipe, overrides, ranks = run
    proc = launch(recipe, f"output_dir={out}", "max_steps=3", "micro_batch_size=2", "model.dtype=fp32", *overrides, ranks=ranks)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("data: the embedded synthetic corpus for ") == 1, proc.stderr[-4000:]  # rank 0's header
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(v is not None for row in rows for v in row.values()), rows
    keys = [k for k in rows[0] if k.startswith("train/") and k not in NOT_LOSS_TERMS]
    return {k: [row[k] for row in rows] for k in keys}


def assert_pinned(name: str, run: PinnedRun, out: Path, pinned: dict[str, list[float]]) -> None:
    """``run`` for 3 steps: every logged loss term matches ``pinned``; the export loads."""
    got = loss_terms(run, out)
    assert set(got) == set(pinned), f"logged terms changed: {sorted(got)}"
    for key, want in pinned.items():
        assert got[key] == pytest.approx(want, rel=RTOL, abs=ATOL), f"{name} {key}: {got[key]} != {want}"
    load_export(out, run[0].endswith("_lora"))


def print_pinned(runs: dict[str, PinnedRun]) -> None:
    """Print a PINNED dict for ``runs`` to paste over the old one."""
    with tempfile.TemporaryDirectory() as tmp:
        print("PINNED: dict[str, dict[str, list[float]]] = {")
        for name, run in runs.items():
            print(f'    "{name}": {{')
            for key, values in loss_terms(run, Path(tmp) / name).items():
                print(f'        "{key}": {values!r},')
            print("    },")
        print("}")


@pytest.mark.parametrize("name", sorted(set(PINNED) - {"rmu_full"}))  # rmu_full: the parameter test below
def test_recipe_losses_match_pinned(name: str, tmp_path: Path, synthetic_corpus) -> None:
    assert_pinned(name, RUNS[name], tmp_path / name, PINNED[name])


def test_rmu_full_losses_match_pinned_and_it_changes_only_selected_parameters(tmp_path: Path, tiny_path: Path,
                                                                           synthetic_corpus) -> None:
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "rmu_full"
    assert_pinned("rmu_full", RUNS["rmu_full"], out, PINNED["rmu_full"])
    # Compared as loaded modules: the on-disk key layout of an export and a fresh checkpoint may differ.
    trained = dict(LlavaForConditionalGeneration.from_pretrained(out / "export", local_files_only=True).named_parameters())
    base = dict(LlavaForConditionalGeneration.from_pretrained(tiny_path, local_files_only=True).named_parameters())
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    allowed = {k for k in base if any(f"language_model.layers.{i}.mlp.down_proj." in k for i in (0, 1, 2)) or "multi_modal_projector." in k}
    assert changed, "RMU trained nothing"
    assert changed <= allowed, sorted(changed - allowed)
    assert {k for k in allowed if "down_proj" in k} <= changed
    control = load_file(str(out / "control.safetensors"))["control"]
    assert control.shape == (128,) and torch.isclose(control.norm(), torch.tensor(10.0))


if __name__ == "__main__":
    # ``launch`` imported conftest, which set the suite's cache and tracking environment.
    print_pinned(RUNS)
