"""Sweeps through a real Slurm: `slurm/submit` -> job array -> `slurm/sweep.sh` -> DeepSpeed.

The single-node cluster of docs/architecture.md ("The test Slurm cluster"), plus a two-node one on this
machine for the `srun` path. Each node runs one rank (MIRAGE_RANKS_PER_NODE=1): two ranks on one node are
covered by test_distributed; here the subject is the array, the per-task outputs, multi-node launch and
preemption through Slurm.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, UNTRAINED
from launch import metrics
from mirage_ds.cli.sweep import expand, load_sweep
from slurm_cluster import Cluster, slurm_cluster, slurm_two_nodes  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.slurm


def _sweep_file(tmp_path: Path, overrides: dict[str, object], **data: object) -> Path:
    path = tmp_path / "sweep.yaml"
    untrained = dict([UNTRAINED.split("=")])  # the suite's runs start from the untrained tiny model
    data = {**data, "overrides": {**untrained, **overrides}, "output_root": str(tmp_path / "runs")}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _submit(cluster: Cluster, sweep: Path, *sbatch: str) -> str:
    proc = subprocess.run(["slurm/submit", str(sweep), "--parsable", *sbatch], cwd=REPO, capture_output=True,
                          text=True, env={**cluster.env, "MIRAGE_RANKS_PER_NODE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _tasks(cluster: Cluster, job: str) -> dict[str, dict[str, str]]:
    """``scontrol show job`` records of an array's tasks, keyed by ``<job>_<task>`` (no accounting here)."""
    out = cluster.run("scontrol", "-o", "show", "job", job, check=False).stdout
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]
    return {f"{r['ArrayJobId']}_{r['ArrayTaskId']}": r for r in records if "ArrayJobId" in r}


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _wait_state(cluster: Cluster, job: str, tasks: int, states: set[str], timeout: float,
                restarts: str | None = None) -> dict[str, dict[str, str]]:
    """Poll until all ``tasks`` array tasks are in ``states`` (and have requeued ``restarts`` times)."""
    deadline = time.monotonic() + timeout
    while True:
        records = _tasks(cluster, job)
        if len(records) == tasks and all(r["JobState"] in states and restarts in (None, r["Restarts"]) for r in records.values()):
            return records
        ended = {key: r["JobState"] for key, r in records.items() if r["JobState"] in FINAL_STATES - states}
        assert not ended, f"job {job} ended {ended} while waiting for {sorted(states)}"
        assert time.monotonic() < deadline, f"job {job} not in {sorted(states)} after {timeout:.0f}s: {records}"
        time.sleep(0.5)


def _slurm_log(out_dir: Path, job: str, task: int) -> str:
    return (out_dir.parent / "logs" / f"slurm-{job}_{task}.out").read_text()


def _overlap(records: dict[str, dict[str, str]]) -> bool:
    """Did two tasks run at the same time (Slurm's StartTime/EndTime, to the second)?"""
    spans = sorted((datetime.fromisoformat(r["StartTime"]), datetime.fromisoformat(r["EndTime"])) for r in records.values())
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


def test_two_by_two_sweep_runs_every_task(slurm_cluster: Cluster, tmp_path: Path, synthetic_corpus: Path,
                                          tiny_path: Path) -> None:
    """Four one-CPU tasks on two CPUs: two at a time, all children of the one parent run slurm/submit made."""
    sweep = _sweep_file(tmp_path, name="grid", recipes=["sft_lora"], grid={"optim.lr": [1.0e-3, 3.0e-3]},
                        seeds=[0, 1], overrides={"max_steps": 2, "micro_batch_size": 2})
    tasks = expand(load_sweep(sweep))
    job = _submit(slurm_cluster, sweep)
    try:
        records = _wait_state(slurm_cluster, job, len(tasks), FINAL_STATES, 600)
    finally:
        slurm_cluster.run("scancel", job, check=False)
    assert sorted(records) == [f"{job}_{t.index}" for t in tasks]
    for task in tasks:
        out = Path(task.output_dir)
        record = records[f"{job}_{task.index}"]
        detail = _slurm_log(out, job, task.index) + "".join(p.read_text()[-3000:] for p in (out / "logs").glob("*.log"))
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), detail
        assert [row["step"] for row in metrics(out)] == [1, 2]
        assert (out / "export" / "adapter_config.json").is_file()
        config = yaml.safe_load((out / "config.yaml").read_text())
        asked = dict(item.split("=", 1) for item in task.overrides)
        assert (config["seed"], config["optim"]["lr"]) == (int(asked["seed"]), float(asked["optim.lr"]))
        assert f"task {task.index} of grid" in _slurm_log(out, job, task.index)
        assert (out / "logs" / "attempt0-node0.log").is_file()
    assert _overlap(records), records
    # Tasks started together, yet the store holds exactly one parent for this sweep and its four children.
    sweep_dir = Path(tasks[0].output_dir).parent
    parent = json.loads((sweep_dir / "mlflow_parent.json").read_text())
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    parents = client.search_runs([parent["experiment_id"]], filter_string=(
        f"tags.`mirage.sweep_parent` = 'grid' AND tags.`mirage.output_dir` = '{sweep_dir}'"))
    assert [run.info.run_id for run in parents] == [parent["run_id"]]
    children = client.search_runs([parent["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{parent['run_id']}'")
    assert sorted(run.data.tags["mirage.sweep_task"] for run in children) == [str(task.index) for task in tasks]
    assert sorted(run.info.run_id for run in children) == sorted(
        json.loads((Path(task.output_dir) / "mlflow_run.json").read_text())["run_id"] for task in tasks)


@pytest.mark.parametrize("nodes", [1, 2])
def test_preempted_task_is_requeued_and_resumes_from_its_checkpoint(nodes: int, request: pytest.FixtureRequest,
                                                                    tmp_path: Path, synthetic_corpus: Path,
                                                                    tiny_path: Path) -> None:
    """USR1 to the batch script reaches the ranks (through srun on 2 nodes), the task requeues and resumes."""
    cluster: Cluster = request.getfixturevalue("slurm_cluster" if nodes == 1 else "slurm_two_nodes")
    # Steps take 0.15-0.5 s here: 20 leave seconds between the first logged steps and the end.
    steps = 20
    sweep = _sweep_file(tmp_path, name="preempt", recipes=["sft_lora"], overrides={"max_steps": steps, "micro_batch_size": 2})
    out = Path(expand(load_sweep(sweep))[0].output_dir)
    job = _submit(cluster, sweep, f"--nodes={nodes}")
    task = f"{job}_0"
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 2):
            assert time.monotonic() < deadline, f"no training steps logged in {out}"
            time.sleep(0.2)
        # What Slurm does 90 s before the time limit (--signal=B:USR1@90): USR1 to the batch script only.
        cluster.run("scancel", "--batch", "--signal=USR1", task)
        # The cluster's cred_expire=10 brings a requeued job back after ~10 s instead of Slurm's 120 s.
        record = _wait_state(cluster, job, 1, FINAL_STATES, 600)[task]
    finally:
        cluster.run("scancel", job, check=False)

    batch_log = _slurm_log(out, job, 0)
    logs = {p.name: p.read_text() for p in (out / "logs").glob("attempt*.log")}
    assert sorted(logs) == sorted(f"attempt{a}-node{n}.log" for a in (0, 1) for n in range(nodes)), batch_log
    detail = batch_log + logs["attempt1-node0.log"][-3000:]
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), detail
    assert f"on {nodes} node(s)" in batch_log
    assert f"preempted; requeueing {task}" in batch_log
    for node in range(nodes):
        first = logs[f"attempt0-node{node}.log"]
        assert "stop forwarded to the ranks as USR1" in first and "launcher exited with 3" in first, first[-3000:]
    resumed = re.search(r"resumed from \S+ at step (\d+)", logs["attempt1-node0.log"])
    assert resumed is not None, detail
    assert 2 <= int(resumed.group(1)) < steps
    assert [row["step"] for row in metrics(out)] == list(range(1, steps + 1))
    final = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert len(list(final.glob("rank*.json"))) == nodes, "one rank per node"
    assert (out / "export" / "adapter_config.json").is_file()
