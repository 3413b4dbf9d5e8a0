"""Faults: kill -9 at an arbitrary step, a kill during a checkpoint save, a non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from launch import DEEPSPEED, free_port, launch, launch_and_preempt, metrics
from conftest import REPO

pytestmark = pytest.mark.distributed

COMMON = ["micro_batch_size=2", "data.num_workers=2", "checkpoint.every=2", "checkpoint.keep=3"]


def _kill9_after(out: Path, step: int, *overrides: str) -> int:
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "launcher/run.py", "--recipe", "sft_full",
           f"output_dir={out}", *overrides]
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


def test_preempt_signal_then_resume_reproduces_losses(straight: Path, tmp_path: Path) -> None:
    interrupted = tmp_path / "interrupted"
    first = launch_and_preempt("sft_full", interrupted, 3, "max_steps=9", *COMMON)
    assert first.returncode == 3, first.stderr[-3000:]
    k = int((interrupted / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= k < 9
    second = launch("sft_full", f"output_dir={interrupted}", "max_steps=9", "resume=auto", *COMMON)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr
    a, b = metrics(straight), metrics(interrupted)
    assert [r["step"] for r in b] == list(range(1, 10))
    for x, y in zip(a[k:], b[k:]):
        assert y["train/loss"] == pytest.approx(x["train/loss"], abs=1e-6), (x["step"], x["train/loss"], y["train/loss"])
    # The resumed process continued the same MLflow run (a changed `resume` param must not block delivery).
    saved = json.loads((interrupted / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert sorted({m.step for m in client.get_metric_history(saved["run_id"], "train/loss")}) == list(range(1, 10))
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"


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


def test_retention_keeps_last_n(tmp_path: Path, synthetic_corpus) -> None:
    out = tmp_path / "run"
    assert launch("sft_full", f"output_dir={out}", "max_steps=8", "micro_batch_size=2", "checkpoint.every=2",
                  "checkpoint.keep=2", ranks=1).returncode == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000006", "step-00000008"]


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path: Path, synthetic_corpus) -> None:
    out = tmp_path / "run"
    proc = launch("sft_full", f"output_dir={out}", "max_steps=30", "micro_batch_size=2", "checkpoint.every=1",
                  "optim.lr=1e12", "optim.warmup_ratio=0", "optim.grad_clip=0")
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "non-finite loss at step" in proc.stderr
    bad_step = int(proc.stderr.split("non-finite loss at step ")[1].split()[0])
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert int(latest.split("-")[1]) == bad_step - 1
    assert not (out / "export").exists()
    rows = metrics(out)
    assert all(r["step"] < bad_step for r in rows)
