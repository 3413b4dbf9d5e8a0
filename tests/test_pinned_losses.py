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

from export_checks import load_export
from launch import launch, metrics

pytestmark = pytest.mark.distributed

PINNED: dict[str, dict[str, list[float]]] = {
    "sft_lora": {
        "train/loss": [6.39111328125, 6.352524757385254, 6.297416687011719],
        "train/ce": [6.39111328125, 6.352524757385254, 6.297416687011719],
    },
    "npo_lora": {
        "train/loss": [10.33970832824707, 9.45617961883545, 8.97065258026123],
        "train/forget": [1.9804205894470215, 1.988222360610962, 1.993037223815918],
        "train/ce": [6.378866195678711, 5.9357686042785645, 5.608409404754639],
        "train/logp_forget": [-6.3758158683776855, -6.346348285675049, -6.382414817810059],
        "train/logp_forget_ref": [-6.3758158683776855, -6.35413932800293, -6.395003795623779],
        "train/retain_npo": [1.9804205894470215, 1.532188057899475, 1.3692059516906738],
    },
    "npo_full": {
        "train/loss": [9.45952033996582, 8.502415657043457, 8.066263198852539],
        "train/forget": [1.5403271913528442, 1.544979453086853, 1.545464277267456],
        "train/ce": [6.378866195678711, 5.886081218719482, 5.579953193664551],
        "train/logp_forget": [-6.3758158683776855, -6.349492073059082, -6.3898725509643555],
        "train/logp_forget_ref": [-6.3758158683776855, -6.35413932800293, -6.395003795623779],
        "train/retain_npo": [1.5403271913528442, 1.071354866027832, 0.940845251083374],
    },
    "rmu_lora": {
        "train/loss": [8.43520736694336, 8.33537769317627, 7.67816162109375],
        "train/forget": [0.7805675864219666, 0.7743735909461975, 0.7748462557792664],
        "train/retain": [0.0, 0.0005800277576781809, 0.0013011072296649218],
        "train/ce": [6.378866195678711, 6.300836086273193, 5.752762794494629],
    },
    "rmu_full": {
        "train/loss": [0.7831595540046692, 0.769686758518219, 0.7622401714324951],
        "train/forget": [0.7831595540046692, 0.769541323184967, 0.7619923949241638],
        "train/retain": [0.0, 0.00014542709686793387, 0.00024777062935754657],
    },
}
RTOL, ATOL = 1e-4, 1e-6
# Logged under train/ by the loop, not by the loss: the schedule and the count of skipped (non-finite) steps.
NOT_LOSS_TERMS = {"train/lr", "train/skipped"}


def loss_terms(recipe: str, out: Path, *overrides: str) -> dict[str, list[float]]:
    """Run ``recipe`` (with ``overrides``) for 3 steps on one rank; each logged loss term (``train/*``, total
    included) per step."""
    proc = launch(recipe, f"output_dir={out}", "max_steps=3", "micro_batch_size=2", "model.dtype=fp32", *overrides, ranks=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    keys = [k for k in rows[0] if k.startswith("train/") and k not in NOT_LOSS_TERMS]
    return {k: [row[k] for row in rows] for k in keys}


def assert_pinned(run: str, recipe: str, overrides: tuple[str, ...], out: Path, pinned: dict[str, list[float]]) -> None:
    """``recipe`` with ``overrides`` for 3 steps: every logged loss term matches ``pinned``; the export loads."""
    got = loss_terms(recipe, out, *overrides)
    assert set(got) == set(pinned), f"logged terms changed: {sorted(got)}"
    for key, want in pinned.items():
        assert got[key] == pytest.approx(want, rel=RTOL, abs=ATOL), f"{run} {key}: {got[key]} != {want}"
    # Also the one-rank smoke run of the unlearning recipes (tests/test_recipes_smoke.py runs them on 2).
    load_export(out, recipe.endswith("_lora"))


def print_pinned(runs: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    """Print a PINNED dict for ``runs`` (name -> (recipe, overrides)) to paste over the old one."""
    with tempfile.TemporaryDirectory() as tmp:
        print("PINNED: dict[str, dict[str, list[float]]] = {")
        for name, (recipe, overrides) in runs.items():
            print(f'    "{name}": {{')
            for key, values in loss_terms(recipe, Path(tmp) / name, *overrides).items():
                print(f'        "{key}": {values!r},')
            print("    },")
        print("}")


@pytest.mark.parametrize("recipe", sorted(PINNED))
def test_recipe_losses_match_pinned(recipe: str, tmp_path: Path, synthetic_corpus) -> None:
    assert_pinned(recipe, recipe, (), tmp_path / recipe, PINNED[recipe])


if __name__ == "__main__":
    # ``launch`` imported conftest, which set the suite's cache and tracking environment.
    print_pinned({name: (name, ()) for name in PINNED})
