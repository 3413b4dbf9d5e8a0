"""Pinned loss values: five recipes, 1 rank, fp32, 3 steps of micro-batch 2 through the real launcher.

Every logged loss term of every step must match the numbers below (as torchtune pins its recipe tests),
so a sign flip, a wrong weight, a changed mask or reduction, or a data-order change fails here. Step 1
has policy == reference (NPO forget == retain_npo == (2/beta) log 2, RMU retain == 0); steps 2 and 3
are where the reference and the policy part, so a swapped or flipped NPO term shows there.

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

from launch import launch, metrics

pytestmark = pytest.mark.distributed

PINNED: dict[str, dict[str, list[float]]] = {
    "sft_lora": {
        "train/loss": [6.435940742492676, 6.3975958824157715, 6.256582736968994],
        "train/ce": [6.435940742492676, 6.3975958824157715, 6.256582736968994],
    },
    "npo_lora": {
        "train/loss": [10.287677764892578, 10.1250638961792, 9.103832244873047],
        "train/forget": [1.9804205894470215, 1.9540760517120361, 1.958532452583313],
        "train/ce": [6.326836109161377, 6.388157844543457, 5.820601463317871],
        "train/logp_forget": [-6.378321647644043, -6.388003349304199, -6.427203178405762],
        "train/logp_forget_ref": [-6.378321647644043, -6.361532211303711, -6.405230522155762],
        "train/retain_npo": [1.9804205894470215, 1.7828302383422852, 1.3246979713439941],
    },
    "npo_full": {
        "train/loss": [9.407490730285645, 9.215275764465332, 8.189899444580078],
        "train/forget": [1.5403271913528442, 1.4986727237701416, 1.516408920288086],
        "train/ce": [6.326836109161377, 6.402177333831787, 5.783790111541748],
        "train/logp_forget": [-6.378321647644043, -6.403595924377441, -6.42927885055542],
        "train/logp_forget_ref": [-6.378321647644043, -6.361532211303711, -6.405230522155762],
        "train/retain_npo": [1.5403271913528442, 1.3144253492355347, 0.8897001147270203],
    },
    "rmu_lora": {
        "train/loss": [8.37350845336914, 8.41043758392334, 7.665246486663818],
        "train/forget": [0.7813052535057068, 0.7841737866401672, 0.777981698513031],
        "train/retain": [0.0, 0.00029012159211561084, 0.002530508441850543],
        "train/ce": [6.326836109161377, 6.355219841003418, 5.739387035369873],
    },
    "rmu_full": {
        "train/loss": [0.7838642597198486, 0.7703272700309753, 0.7630598545074463],
        "train/forget": [0.7838642597198486, 0.7700467705726624, 0.7628037333488464],
        "train/retain": [0.0, 0.00028052504057995975, 0.0002561440924182534],
    },
}
RTOL, ATOL = 1e-4, 1e-6
# Logged under train/ by the loop, not by the loss: the schedule and the count of skipped (non-finite) steps.
NOT_LOSS_TERMS = {"train/lr", "train/skipped"}


def loss_terms(recipe: str, out: Path) -> dict[str, list[float]]:
    """Run ``recipe`` for 3 steps on one rank; each logged loss term (``train/*``, total included) per step."""
    proc = launch(recipe, f"output_dir={out}", "max_steps=3", "micro_batch_size=2", "model.dtype=fp32", ranks=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    keys = [k for k in rows[0] if k.startswith("train/") and k not in NOT_LOSS_TERMS]
    return {k: [row[k] for row in rows] for k in keys}


@pytest.mark.parametrize("recipe", sorted(PINNED))
def test_recipe_losses_match_pinned(recipe: str, tmp_path: Path, synthetic_corpus) -> None:
    got = loss_terms(recipe, tmp_path / recipe)
    assert set(got) == set(PINNED[recipe]), f"logged terms changed: {sorted(got)}"
    for key, want in PINNED[recipe].items():
        assert got[key] == pytest.approx(want, rel=RTOL, abs=ATOL), f"{recipe} {key}: {got[key]} != {want}"


if __name__ == "__main__":
    # ``launch`` imported conftest, which set the suite's cache and tracking environment.
    with tempfile.TemporaryDirectory() as tmp:
        print("PINNED: dict[str, dict[str, list[float]]] = {")
        for name in PINNED:
            print(f'    "{name}": {{')
            for key, values in loss_terms(name, Path(tmp) / name).items():
                print(f'        "{key}": {values!r},')
            print("    },")
        print("}")
