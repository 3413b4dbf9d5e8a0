"""MLflow end to end: a tiny sft_lora run, then `mirage-ds eval`, then the run read back with real clients,
against the default sqlite store and a real `mlflow server` on 127.0.0.1; and a server outage mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import REPO
from launch import DEEPSPEED, free_port, launch
from mlflow_server import mlflow_server, start_server, stop_server

pytestmark = pytest.mark.distributed
MIRAGE = str(Path(sys.executable).parent / "mirage-ds")


def _env(uri: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _train_and_eval(run_dir: Path, env: dict[str, str]) -> None:
    proc = launch("sft_lora", f"output_dir={run_dir}", "max_steps=3", "micro_batch_size=2", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = subprocess.run([MIRAGE, "eval", "--run", str(run_dir), "--limit", "8", "--shots", "2", "--max-new-tokens", "4"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]


def _check_tracked(uri: str, run_dir: Path, tmp_path: Path) -> None:
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["recipe"] == "sft_lora" and run.data.params["max_steps"] == "3"
    assert run.data.params["model.lora.r"] == "8"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    for key in ("train/lr", "perf/tokens_per_s", "system/rss_gib", "eval/asr_before", "eval/asr_after", "eval/rr_before",
                "eval/rr_after", "eval/utility"):
        assert key in run.data.metrics, key
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "ds_config.json", "eval"} <= top
    evals = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/eval.json", "eval/eval_table.md", "eval/eval_attack.png", "eval/generations.jsonl"} <= evals
    mlflow.set_tracking_uri(uri)
    frame = mlflow.search_runs(experiment_names=["mirage-ds"])
    assert run.info.run_id in set(frame["run_id"])
    cmp = subprocess.run([MIRAGE, "compare", "--experiment", "mirage-ds", "--tracking-uri", uri, "--out", str(tmp_path / "cmp")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert run.info.run_name in cmp.stdout and "ASR before" in cmp.stdout
    assert (tmp_path / "cmp" / "comparison.csv").read_text().count("\n") >= 2


def test_default_sqlite_store(tmp_path: Path, synthetic_corpus) -> None:
    run_dir = tmp_path / "runs" / "a"
    _train_and_eval(run_dir, _env(None))
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    _check_tracked(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", run_dir, tmp_path)


def test_real_mlflow_server(tmp_path: Path, synthetic_corpus) -> None:
    with mlflow_server(free_port(), tmp_path / "server") as uri:
        run_dir = tmp_path / "runs" / "b"
        _train_and_eval(run_dir, _env(uri))
        _check_tracked(uri, run_dir, tmp_path)
    assert not (tmp_path / "runs" / "mlflow.db").exists(), "with a server set, nothing goes to the default store"


def test_server_outage_mid_run_loses_nothing(tmp_path: Path, synthetic_corpus) -> None:
    port, store = free_port(), tmp_path / "server"
    store.mkdir()
    server = start_server(port, store)
    uri = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "runs" / "c"
    steps = 60
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "launcher/run.py", "--recipe", "sft_lora",
           f"output_dir={run_dir}", f"max_steps={steps}", "micro_batch_size=2", "tracking.retry_s=1"]
    train = subprocess.Popen(cmd, cwd=REPO, env=_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    try:
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
            assert train.poll() is None, train.stderr.read()[-3000:]
            time.sleep(0.05)
        stop_server(server, crash=True)  # the server goes away mid-run
        down_at = len(metrics.read_text().splitlines())
        while train.poll() is None and len(metrics.read_text().splitlines()) < down_at + 10:
            time.sleep(0.05)
        server = start_server(port, store)  # ... and comes back (during the run, or before its final flush)
        _, stderr = train.communicate(timeout=600)
    finally:
        stop_server(server)
    assert train.returncode == 0, stderr[-3000:]
    assert down_at < steps
    assert stderr.count("MLflow unreachable") == 1, stderr[-3000:]
    server = start_server(port, store)
    try:
        client = MlflowClient(tracking_uri=uri)
        run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        history = client.get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))
        local = [json.loads(line)["train/loss"] for line in metrics.read_text().splitlines()]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(local)
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        stop_server(server)
