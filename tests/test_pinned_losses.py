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
        "train/loss": [6.384854793548584, 6.334414482116699, 6.11061429977417],
        "train/ce": [6.384854793548584, 6.334414482116699, 6.11061429977417],
    },
    "npo_lora": {
        "train/loss": [10.454620361328125, 9.5953950881958, 9.010866165161133],
        "train/forget": [1.9804205894470215, 1.9514384269714355, 1.9382340908050537],
        "train/ce": [6.493778705596924, 6.203863620758057, 5.7381510734558105],
        "train/logp_forget": [-6.3788299560546875, -6.393481254577637, -6.413305759429932],
        "train/logp_forget_ref": [-6.3788299560546875, -6.36435079574585, -6.370790958404541],
        "train/retain_npo": [1.9804205894470215, 1.4400930404663086, 1.3344814777374268],
    },
    "npo_full": {
        "train/loss": [9.574433326721191, 8.642633438110352, 8.145605087280273],
        "train/forget": [1.5403271913528442, 1.4881491661071777, 1.470116138458252],
        "train/ce": [6.493778705596924, 6.1650190353393555, 5.748068809509277],
        "train/logp_forget": [-6.3788299560546875, -6.417156219482422, -6.442172527313232],
        "train/logp_forget_ref": [-6.3788299560546875, -6.36435079574585, -6.370790958404541],
        "train/retain_npo": [1.5403271913528442, 0.9894655346870422, 0.9274202585220337],
    },
    "rmu_lora": {
        "train/loss": [8.569002151489258, 8.063822746276855, 7.551523685455322],
        "train/forget": [0.7764674425125122, 0.7784074544906616, 0.7762460708618164],
        "train/retain": [0.0, 0.002202640986070037, 0.006363223772495985],
        "train/ce": [6.493778705596924, 6.071179389953613, 5.646064281463623],
    },
    "rmu_full": {
        "train/loss": [0.7837840914726257, 0.7697300910949707, 0.7624374032020569],
        "train/forget": [0.7837840914726257, 0.76949542760849, 0.7621411681175232],
        "train/retain": [0.0, 0.00023463867546524853, 0.000296221231110394],
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
