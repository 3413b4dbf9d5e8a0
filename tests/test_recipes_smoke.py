"""Every Table 1 SFT recipe runs a few steps on the embedded default through the real launcher, logs its loss and
exports a loadable model, on one rank as plain python: their loss and engine path is sft_full's / sft_lora's,
which tests/test_distributed.py runs on 2 ranks. The unlearning recipes' runs (2 ranks, every term logged, the
export loads) are tests/test_pinned_losses.py's, where every term is also pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_checks import load_export
from launch import metrics, run_one_rank

pytestmark = pytest.mark.distributed

SFT = [f"{m}_{k}" for m in ("unsafe_filter", "mixed_sft", "posthoc_sft") for k in ("full", "lora")]


@pytest.mark.parametrize("recipe", SFT)
def test_table1_recipe_smoke(recipe: str, tmp_path: Path, synthetic_corpus) -> None:
    out = tmp_path / recipe
    proc = run_one_rank(recipe, f"output_dir={out}", "max_steps=3", "micro_batch_size=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("data: the embedded synthetic corpus for ") == 1, proc.stderr[-4000:]
    rows = metrics(out)
    assert len(rows) == 3
    assert "train/ce" in rows[0], rows[0]
    assert all(v is not None for r in rows for v in r.values())
    load_export(out, recipe.endswith("_lora"))
