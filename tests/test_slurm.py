"""Sweeps through a real single-node Slurm: `slurm/submit` -> job array -> `slurm/sweep.sh` -> DeepSpeed.

Each task runs one rank (MIRAGE_RANKS_PER_NODE=1): two ranks per run are covered by test_distributed and
test_multinode; here the subject is the array, the per-task outputs and preemption through Slurm.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from launch import metrics
from mirage_ds.sweep import expand, load_sweep
from slurm_cluster import Cluster, slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slurm


def _sweep_file(tmp_path: Path, **data: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**data, "output_root": str(tmp_path / "runs")}, sort_keys=False))
    return path


def _submit(cluster: Cluster, sweep: Path) -> str:
    # --exclusive: one task at a time gets the whole (2-core) node, instead of tasks sharing it slower.
    proc = subprocess.run(["slurm/submit", str(sweep), "--parsable", "--exclusive"], cwd=REPO, capture_output=True,
                          text=True, env={**cluster.env, "MIRAGE_RANKS_PER_NODE": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _tasks(cluster: Cluster, job: str) -> dict[str, dict[str, str]]:
    """``scontrol show job`` records of an array's tasks, keyed by ``<job>_<task>`` (no accounting here)."""
    out = cluster.run("scontrol", "-o", "show", "job", job, check=False).stdout
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]
    return {f"{r['ArrayJobId']}_{r['ArrayTaskId']}": r for r in records if "ArrayJobId" in r}


def _wait_gone(cluster: Cluster, job: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while cluster.run("squeue", "-h", "-j", job, check=False).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued after {timeout:.0f}s"
        time.sleep(1)


def _slurm_log(out_dir: Path, job: str, task: int) -> str:
    return (out_dir.parent / "logs" / f"slurm-{job}_{task}.out").read_text()


def test_two_by_two_sweep_runs_every_task(slurm_cluster: Cluster, tmp_path: Path, synthetic_corpus: Path,
                                          tiny_path: Path) -> None:
    sweep = _sweep_file(tmp_path, name="grid", recipes=["sft_lora"], grid={"optim.lr": [1.0e-3, 3.0e-3]},
                        seeds=[0, 1], overrides={"max_steps": 2, "micro_batch_size": 2})
    job = _submit(slurm_cluster, sweep)
    try:
        _wait_gone(slurm_cluster, job, 600)
    finally:
        slurm_cluster.run("scancel", job, check=False)
    tasks = expand(load_sweep(sweep))
    records = _tasks(slurm_cluster, job)
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
    # The sweep seam (MIRAGE_SWEEP_NAME / MIRAGE_SWEEP_TASK): every task is a child of one MLflow parent run.
    from mirage_ds.mlflow_tracker import attached_run

    runs = [attached_run(Path(task.output_dir)) for task in tasks]
    assert all(run is not None for run in runs)
    tags = [client.get_run(run_id).data.tags for client, run_id in runs]  # type: ignore[misc]
    assert [t["mirage.sweep_task"] for t in tags] == [str(task.index) for task in tasks]
    assert len({t["mlflow.parentRunId"] for t in tags}) == 1
    client = runs[0][0]  # type: ignore[index]
    assert client.get_run(tags[0]["mlflow.parentRunId"]).data.tags["mirage.sweep_parent"] == "grid"


def test_preempted_task_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster: Cluster, tmp_path: Path,
                                                                    synthetic_corpus: Path, tiny_path: Path) -> None:
    steps = 12
    sweep = _sweep_file(tmp_path, name="preempt", recipes=["sft_lora"], overrides={"max_steps": steps, "micro_batch_size": 2})
    out = Path(expand(load_sweep(sweep))[0].output_dir)
    job = _submit(slurm_cluster, sweep)
    task = f"{job}_0"
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 2):
            assert time.monotonic() < deadline, f"no training steps logged in {out}"
            time.sleep(0.2)
        # What Slurm does 90 s before the time limit (--signal=B:USR1@90): USR1 to the batch script only.
        slurm_cluster.run("scancel", "--batch", "--signal=USR1", task)
        deadline = time.monotonic() + 300
        while _tasks(slurm_cluster, job).get(task, {}).get("Restarts") != "1":
            assert time.monotonic() < deadline, f"{task} was not requeued:\n{_slurm_log(out, job, 0)}"
            time.sleep(0.5)
        # Slurm holds a requeued job for ~120 s (BeginTime); start it now to keep the test short.
        slurm_cluster.run("scontrol", "update", f"JobId={task}", "StartTime=now", check=False)
        _wait_gone(slurm_cluster, job, 600)
    finally:
        slurm_cluster.run("scancel", job, check=False)

    batch_log = _slurm_log(out, job, 0)
    first, second = (out / "logs" / "attempt0-node0.log").read_text(), (out / "logs" / "attempt1-node0.log").read_text()
    record = _tasks(slurm_cluster, job)[task]
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), batch_log + second[-3000:]
    assert f"preempted after a checkpoint; requeueing {task}" in batch_log
    assert "stop forwarded to the ranks as USR1" in first and "launcher exited with 3" in first
    resumed = re.search(r"resumed from \S+ at step (\d+)", second)
    assert resumed is not None, second[-3000:]
    assert 2 <= int(resumed.group(1)) < steps
    assert [row["step"] for row in metrics(out)] == list(range(1, steps + 1))
    assert (out / "export" / "adapter_config.json").is_file()
