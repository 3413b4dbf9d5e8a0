"""Two "nodes" on one machine: slurm/node.sh (what sweep.sh runs on each node through srun) started twice,
node ranks 0 and 1 with one rank each, rendezvous on loopback. The real DeepSpeed launcher with --no_ssh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, UNTRAINED
from launch import free_port, metrics

pytestmark = pytest.mark.distributed


def test_two_nodes_one_rank_each_train_one_model(tmp_path: Path, synthetic_corpus: Path, tiny_path: Path) -> None:
    out = tmp_path / "run"
    env = {
        **os.environ,
        "MIRAGE_NNODES": "2",
        "MIRAGE_RANKS_PER_NODE": "1",
        "MIRAGE_MASTER_ADDR": "127.0.0.1",
        "MIRAGE_MASTER_PORT": str(free_port()),
        "MIRAGE_LOG_PREFIX": f"{out}/logs/",
    }
    args = ["--recipe", "sft_lora", UNTRAINED, f"output_dir={out}", "max_steps=3", "micro_batch_size=2"]
    nodes = [
        subprocess.Popen(["bash", "slurm/node.sh", *args], cwd=REPO, env={**env, "MIRAGE_NODE_RANK": str(rank)})
        for rank in (0, 1)
    ]
    try:
        codes = [node.wait(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    logs = [(out / "logs" / f"node{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)

    assert "node 0/2, 1 rank(s)" in logs[0] and "node 1/2, 1 rank(s)" in logs[1]
    # Each node's launcher saw the two-node world and started global rank = its node rank.
    for rank, log in enumerate(logs):
        assert "dist_world_size=2" in log
        assert f"global_rank_mapping=defaultdict(<class 'list'>, {{'node0': [0], 'node1': [1]}})" in log
        assert f"node_rank={rank}" in log
    assert [row["step"] for row in metrics(out)] == [1, 2, 3]
    step = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    # One resume record per rank, and ZeRO optimizer shards for a world of two: both ranks trained.
    assert sorted(p.name for p in step.glob("rank*.json")) == ["rank00000.json", "rank00001.json"]
    shards = sorted(p.name for p in step.rglob("*optim_states.pt"))
    assert len(shards) == 2 and any("rank_0_" in s for s in shards) and any("rank_1_" in s for s in shards), shards
    assert (out / "export").is_dir()
