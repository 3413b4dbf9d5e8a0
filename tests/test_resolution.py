"""A run's length in epochs, resolved to optimizer steps before any rank trains (engine/resolution.py), and
the one-of-two rule between ``epochs`` and ``max_steps``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from mirage_ds.config import load_config
from mirage_ds.engine.resolution import resolve_run
from shards_util import make_shards


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("epochs")
    return {"train": make_shards(root / "train", 7, 2), "forget": make_shards(root / "forget", 5, 2, "f"),
            "retain": make_shards(root / "retain", 11, 2, "r")}


def test_epochs_resolve_to_max_steps_on_one_and_two_ranks(shard_sets: dict[str, Path]) -> None:
    # SFT, 7 train samples, micro-batch 2, grad_accum 2, 3 epochs. One rank: ceil(7/2) = 4 micro-batches,
    # 4 // 2 = 2 steps an epoch, 6 steps. Two ranks: ceil(7/2) = 4 samples a rank, 2 micro-batches, 1 step an
    # epoch, 3 steps.
    sft = load_config("sft_lora", [f"data.train={shard_sets['train']}", "micro_batch_size=2", "grad_accum=2", "epochs=3"])
    assert (sft.max_steps, sft.epochs) == (None, 3)
    one, two = resolve_run(sft, 1), resolve_run(sft, 2)
    assert (one.cfg.max_steps, one.cfg.epochs, two.cfg.max_steps, two.cfg.epochs) == (6, None, 3, None)
    assert one.record == {"epochs": 3, "epoch_stream": "train", "epoch_samples": 7, "steps_per_epoch": 2, "max_steps": 6}
    assert two.header == ["max_steps 3 = 3 epochs x 1 steps: 7 train samples over 2 ranks x micro_batch_size 2 x grad_accum 2"]
    assert one.warnings == two.warnings == []

    # NPO counts the retain set (11), not the forget set (5): one rank, ceil(11/2) = 6 steps an epoch, 12 in
    # 2 epochs (the forget set would give 6); two ranks, ceil(11/2) = 6 a rank, 3 micro-batches, 6 steps.
    npo = load_config("npo_lora", [f"data.forget={shard_sets['forget']}", f"data.retain={shard_sets['retain']}",
                                   "micro_batch_size=2", "epochs=2"])
    assert [resolve_run(npo, world).cfg.max_steps for world in (1, 2)] == [12, 6]
    assert resolve_run(npo, 1).record["epoch_stream"] == resolve_run(load_config("rmu_lora", ["epochs=1"]), 1).record["epoch_stream"] == "retain"
    # A config with max_steps resolves to itself.
    assert resolve_run(load_config("sft_lora"), 2).cfg == load_config("sft_lora")


@pytest.mark.distributed  # starts the launcher, which exits before any rank starts
def test_max_steps_and_epochs_together_are_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "launcher/run.py", "--recipe", "sft_lora", "max_steps=3", "epochs=2",
                           f"output_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: overrides set both max_steps and epochs: set one of them"]
    assert not (tmp_path / "out").exists()
