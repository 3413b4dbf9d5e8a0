"""Faults: a stop signal (SIGINT, SIGUSR1), kill -9 at an arbitrary step, a kill during a checkpoint save, a resume at
the last step, an output_dir that cannot be started, a non-finite loss or gradient; and the MLflow run through them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from launch import DEEPSPEED, free_port, launch, launch_and_preempt, metrics, run_one_rank
from conftest import REPO, UNTRAINED

pytestmark = pytest.mark.distributed

COMMON = ["micro_batch_size=2", "data.num_workers=2", "checkpoint.every=2", "checkpoint.keep=3"]


def _kill9_after(out: Path, step: int, *overrides: str) -> int:
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "launcher/run.py", "--recipe", "sft_full",
           UNTRAINED, f"output_dir={out}", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
        if len(rows) >= step:
            os.killpg(proc.pid, signal.SIGKILL)  # launcher and every rank, no chance to clean up
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    return len((out / "metrics.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, synthetic_corpus) -> Path:
    """The uninterrupted reference run both crash tests must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = launch("sft_full", f"output_dir={out}", "max_steps=9", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _assert_mlflow_has_each_step_once(out: Path, status: str) -> None:
    """The MLflow run of ``out`` holds every metric of metrics.jsonl once per step, with metrics.jsonl's training
    values (a replayed step's timings are measured again, so only train/* must match), and ended ``status``."""
    saved = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    rows = metrics(out)
    for key in rows[0].keys() - {"step"}:
        history = sorted((m.step, m.value) for m in client.get_metric_history(saved["run_id"], key))
        assert [step for step, _ in history] == [row["step"] for row in rows], key
        if key.startswith("train/"):
            assert [value for _, value in history] == pytest.approx([row[key] for row in rows], abs=1e-6), key
    assert client.get_run(saved["run_id"]).info.status == status


def test_preempt_signal_then_resume_reproduces_losses(straight: Path, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) to one rank, SIGUSR1 (Slurm) to the other: each is a stop request, so every rank
    finishes the step, checkpoints and exits 3, and the MLflow run says KILLED; ``resume=auto`` continues."""
    interrupted = tmp_path / "interrupted"
    first = launch_and_preempt("sft_full", interrupted, 3, "max_steps=9", *COMMON, signals=(signal.SIGINT, signal.SIGUSR1))
    assert first.returncode == 3, first.stderr[-3000:]
    k = int((interrupted / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= k < 9
    _assert_mlflow_has_each_step_once(interrupted, "KILLED")
    second = launch("sft_full", f"output_dir={interrupted}", "max_steps=9", "resume=auto", *COMMON)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr
    a, b = metrics(straight), metrics(interrupted)
    assert [r["step"] for r in b] == list(range(1, 10))
    for x, y in zip(a[k:], b[k:]):
        assert y["train/loss"] == pytest.approx(x["train/loss"], abs=1e-6), (x["step"], x["train/loss"], y["train/loss"])
    # The resumed process continued the same MLflow run (a changed `resume` param must not block delivery).
    _assert_mlflow_has_each_step_once(interrupted, "FINISHED")


def test_kill9_then_resume_reproduces_losses_and_weights(straight: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    logged = _kill9_after(crashed, 5, "max_steps=9", *COMMON)
    assert 5 <= logged < 9
    resumed = launch("sft_full", f"output_dir={crashed}", "max_steps=9", "resume=auto", *COMMON)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = metrics(straight), metrics(crashed)
    assert [r["step"] for r in b] == list(range(1, 10))
    for x, y in zip(a, b):
        assert y["train/loss"] == pytest.approx(x["train/loss"], abs=1e-6), x["step"]
    # The kill took MLflow's undelivered queue; the resumed run delivers what it lacks, never a step twice.
    _assert_mlflow_has_each_step_once(crashed, "FINISHED")
    wa = load_file(str(straight / "export" / "model.safetensors"))
    wb = load_file(str(crashed / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path, synthetic_corpus) -> None:
    out = tmp_path / "run"
    os.environ["MIRAGE_CRASH_IN_SAVE"] = "4"
    try:
        proc = launch("sft_full", f"output_dir={out}", "max_steps=6", *COMMON)
    finally:
        del os.environ["MIRAGE_CRASH_IN_SAVE"]
    assert proc.returncode != 0
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000002"
    assert (ckpts / ".partial-step-00000004").is_dir() and not (ckpts / "step-00000004").exists()
    resumed = launch("sft_full", f"output_dir={out}", "max_steps=6", "resume=auto", *COMMON)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-00000002" in resumed.stderr
    assert [r["step"] for r in metrics(out)] == list(range(1, 7))
    assert not list(ckpts.glob(".partial-*")), "stale partial checkpoint not cleaned"


def test_retention_keeps_last_n(straight: Path) -> None:
    """checkpoint.every=2, keep=3 over 9 steps: steps 2, 4, 6 and 8 saved, then the final step 9; the last 3 kept."""
    ckpts = straight / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000006", "step-00000008", "step-00000009"]
    assert (ckpts / "latest").read_text().strip() == "step-00000009"


def _resume_straight(straight: Path, out: Path) -> None:
    """Start ``out`` from a copy of the straight run's checkpoints (latest: step 9)."""
    shutil.copytree(straight / "checkpoints", out / "checkpoints")


def test_resume_at_the_last_step_keeps_its_checkpoint(straight: Path, tmp_path: Path) -> None:
    """Resumed at step 9 of 9 nothing trains; the export is written, and step-9, the one checkpoint of that state,
    is left as it is (today's save deleted it and renamed a copy in: a kill in between left nothing to resume)."""
    out = tmp_path / "run"
    _resume_straight(straight, out)
    step9 = out / "checkpoints" / "step-00000009"
    before = {p.relative_to(step9): p.stat().st_ino for p in [step9, *step9.rglob("*")]}
    proc = launch("sft_full", f"output_dir={out}", "max_steps=9", "resume=auto", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.relative_to(step9): p.stat().st_ino for p in [step9, *step9.rglob("*")]} == before
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000009"
    wa, wb = load_file(str(straight / "export" / "model.safetensors")), load_file(str(out / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _files(root: Path) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def test_a_dangling_latest_is_an_error_naming_it(tmp_path: Path) -> None:
    """A ``latest`` naming a missing directory fails with one line, exit 2, instead of a silent start from step 0."""
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step-00000008").mkdir(parents=True)
    (ckpts / "latest").write_text("step-00000009")
    before = _files(tmp_path)
    proc = run_one_rank("sft_full", f"output_dir={tmp_path / 'run'}", "max_steps=2", "resume=auto")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {ckpts / 'latest'} names step-00000009, which does not exist (checkpoints there: step-00000008); "
        f"write one of them into latest, or move {ckpts} aside to start afresh"]
    assert _files(tmp_path) == before


def test_a_fresh_run_is_refused_a_directory_with_logged_steps(tmp_path: Path) -> None:
    """``resume=never`` into a directory whose last run logged steps but saved no checkpoint (killed early) is
    refused, its metrics.jsonl kept; ``resume=auto`` starts it from step 0 (and replays into the same records)."""
    from mirage_ds.config import ConfigError
    from mirage_ds.engine.checkpoint import resume_point

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 6.4}) + "\n")
    before = _files(tmp_path)
    with pytest.raises(ConfigError) as err:
        resume_point(tmp_path, "never")
    assert str(err.value) == f"output_dir={str(tmp_path)!r} already holds logged steps (metrics.jsonl); pass resume=auto or a new output_dir"
    assert resume_point(tmp_path, "auto") is None
    assert _files(tmp_path) == before


def test_nonfinite_skip_leaves_weights_bitwise_and_counts(straight: Path, tmp_path: Path) -> None:
    """2 ranks, resumed at step 9: step 10 has a NaN loss with finite gradients, step 11 a finite loss with NaN
    gradients (both injected on rank 0 only). Neither update is applied, so the export after step 11 is bitwise
    the straight run's after step 9; both are counted and the run finishes."""
    out = tmp_path / "skip"
    _resume_straight(straight, out)
    env = {**os.environ, "MIRAGE_NAN_AT_STEP": "10", "MIRAGE_NAN_GRAD_AT_STEP": "11"}
    proc = launch("sft_full", f"output_dir={out}", "max_steps=11", "resume=auto", "nonfinite=skip", *COMMON, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "non-finite loss at step 10" in proc.stderr and "non-finite gradient norm at step 11" in proc.stderr
    rows = metrics(out)
    assert [(r["step"], r["train/skipped"]) for r in rows] == [(10, 1.0), (11, 2.0)]
    assert rows[0]["train/loss"] is None and rows[1]["train/loss"] is not None  # NaN is written as null
    before = load_file(str(straight / "export" / "model.safetensors"))
    after = load_file(str(out / "export" / "model.safetensors"))
    assert before.keys() == after.keys(), sorted(before.keys() ^ after.keys())
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


@pytest.mark.parametrize(("overrides", "nan_steps", "bad_step", "latest"), [
    (["nonfinite=stop"], "10", 10, 9),
    (["nonfinite=skip", "nonfinite_max_skips=2"], "10,11", 11, 10),
], ids=["stop", "skip_limit"])
def test_nonfinite_stop_exits_4_with_last_good_checkpoint(straight: Path, tmp_path: Path, overrides: list[str],
                                                          nan_steps: str, bad_step: int, latest: int) -> None:
    """2 ranks, resumed at step 9, checkpointing every step: ``stop`` ends at the first NaN loss, ``skip`` at the
    second in a row. The update is discarded by the same path the skip test checks bitwise; the live weights
    end with the process, so what is visible is that nothing after the last good step was saved or exported."""
    out = tmp_path / "run"
    _resume_straight(straight, out)
    env = {**os.environ, "MIRAGE_NAN_AT_STEP": nan_steps}
    proc = launch("sft_full", f"output_dir={out}", "max_steps=12", "resume=auto", *COMMON, "checkpoint.every=1",
                  *overrides, env=env)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert f"non-finite loss at step {bad_step}" in proc.stderr and "no update applied" in proc.stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{latest:08d}"
    assert not (out / "export").exists()
    assert [r["step"] for r in metrics(out)] == list(range(10, bad_step))
