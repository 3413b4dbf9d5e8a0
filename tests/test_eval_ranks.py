"""Evaluation across ranks: the same `mirage-ds eval` under the DeepSpeed launcher answers exactly as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, VLGUARD
from launch import DEEPSPEED, free_port
from mirage_ds.eval.generation import Prompt
from mirage_ds.eval.sharding import Ranks, rank_batches


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(f"p{i}", f"question {i}", b"") for i in range(n)]


def test_ranks_get_whole_batches_of_one_process_and_run_equally_often() -> None:
    prompts = _prompts(21)  # batches of 2: ten full ones and a last one of 1
    batches = [[p.key for p in prompts[i : i + 2]] for i in range(0, 21, 2)]
    shares = [rank_batches(prompts, 2, Ranks(rank, 2)) for rank in (0, 1)]
    (zero, zero_pad), (one, one_pad) = shares
    assert (zero_pad, one_pad) == (0, 2)  # rank 1 holds 5 batches, rank 0 holds 6: rank 1 repeats batch 0 first
    assert [p.key for p in one[:2]] == batches[0]
    own = [[p.key for p in share[pad:][i : i + 2]] for share, pad in shares for i in range(0, len(share) - pad, 2)]
    assert sorted(own) == sorted(batches)  # every batch once, grouped as one process groups them
    assert (len(zero), len(one)) == (11, 12)  # six batches each; rank 0's last one is the short one
    # Fewer batches than ranks: the idle rank still runs one (repeated) batch.
    assert [(len(s), pad) for s, pad in (rank_batches(_prompts(3), 4, Ranks(r, 2)) for r in (0, 1))] == [(3, 0), (3, 3)]


@pytest.mark.distributed
@pytest.mark.usefixtures("vlguard")
def test_two_ranks_evaluate_exactly_as_one(tiny_path: Path, tmp_path: Path) -> None:
    """fp32 greedy on the tiny model, the paper's cases with placeholder images: 21 prompts in 11 batches of 2,
    so rank 0 runs 6 batches (the last one short) and rank 1 runs 5 plus a repeated one."""
    args = ["eval", "--model", str(tiny_path), "--vlguard", str(VLGUARD), "--placeholder-images", "--limit", "3",
            "--batch-size", "2", "--max-new-tokens", "6", "--sample", "100"]
    one = subprocess.run([sys.executable, "-m", "mirage_ds.cli.main", *args, "--out", str(tmp_path / "one")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank", "--module",
                          "mirage_ds.cli.main", *args, "--out", str(tmp_path / "two")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    # Rank 0 alone warns, judges and writes (a rank that missed the launcher's ranks would do it twice).
    assert two.stderr.count("prompts use placeholder images") == 1
    assert two.stdout.count("wrote ") == 1

    generations = [(tmp_path / run / "generations.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(generations[0]) == 21 and generations[0] == generations[1]
    results = [json.loads((tmp_path / run / "eval.json").read_text()) for run in ("one", "two")]
    assert results[0] == results[1]
    assert results[0]["counts"]["prompts"] == 21
