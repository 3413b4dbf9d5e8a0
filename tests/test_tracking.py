"""MLflow end to end: a tiny sft_lora run, then `mirage-ds eval`, then `mirage-ds compare`, read back with real
clients, against the default sqlite store and a real `mlflow server` on 127.0.0.1 (which goes down mid-run);
which experiment compare shows and where it looked; and a store whose creation was killed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import REPO, UNTRAINED
from launch import DEEPSPEED, free_port
from mlflow_server import start_server, stop_server
from mirage_ds.eval.comparison import NothingToCompare, compare
from mirage_ds.tracking.mlflow_run import MlflowTracker, log_results

MIRAGE = str(Path(sys.executable).parent / "mirage-ds")
LAUNCHER = str(REPO / "launcher" / "run.py")


def _env(uri: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _train_cmd(run_dir: Path, *overrides: str, ranks: int = 2) -> list[str]:
    return [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), LAUNCHER, "--recipe", "sft_lora",
            UNTRAINED, f"output_dir={run_dir}", "micro_batch_size=2", *overrides]


def _train_and_eval(run_dir: Path, env: dict[str, str], cwd: Path) -> None:
    """Started from ``cwd``, like `make run` from the repository root: the default store is ``cwd/runs``."""
    proc = subprocess.run(_train_cmd(run_dir, "max_steps=3"), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _eval(run_dir, env, cwd)


def _eval(run_dir: Path, env: dict[str, str], cwd: Path) -> None:
    ev = subprocess.run([MIRAGE, "eval", "--run", str(run_dir), "--limit", "8", "--shots", "2", "--max-new-tokens", "4"],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    # No eval set or judge named: the header and eval.json say which defaults were taken.
    assert "(default: the run's embedded corpus)" in ev.stderr and "judge: keyword:vlguard-v2 (default)" in ev.stderr
    result = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert result["eval_set"]["chosen"] == "default: the run's embedded corpus" and result["judge"]["chosen"] == "default"
    assert result["eval_set"]["data"].endswith("/eval") and result["eval_set"]["vlguard"] is None


def _check_tracked(uri: str, run_dir: Path, steps: int = 3) -> str:
    """The run of ``run_dir`` (``steps`` steps, then `mirage-ds eval`) as MLflow's clients read it from ``uri``: each
    step's metrics once, with metrics.jsonl's values; params, library versions, artifacts, eval's results."""
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(saved["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["recipe"] == "sft_lora" and run.data.params["max_steps"] == str(steps)
    assert run.data.params["model.lora.r"] == "8"
    for package in ("torch", "transformers", "deepspeed", "peft"):
        assert run.data.params[f"versions.{package}"] == metadata.version(package), package
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, steps + 1))
    local = [json.loads(line)["train/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx(local)
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
    return run.info.run_name


@pytest.mark.distributed
def test_default_store_is_found_by_compare_with_no_flags(tmp_path: Path, synthetic_corpus) -> None:
    """`make run` then `mirage-ds compare`: training, eval and compare agree on runs/mlflow.db under the cwd."""
    env = _env(None)
    run_dir = tmp_path / "runs" / "a"
    _train_and_eval(run_dir, env, cwd=tmp_path)
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    name = _check_tracked(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", run_dir)
    cmp = subprocess.run([MIRAGE, "compare"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert f"| {name} | " in cmp.stdout and name.startswith("sft_lora:") and "ASR before" in cmp.stdout
    assert [r["model"] for r in json.loads((tmp_path / "runs" / "comparison" / "comparison.json").read_text())["rows"]] == [name]


@pytest.mark.distributed
def test_real_mlflow_server_through_an_outage_mid_run(tmp_path: Path, synthetic_corpus) -> None:
    """A real `mlflow server` on 127.0.0.1, killed while a 2-rank run logs to it and started again: the run
    says so once, finishes, and the server ends with every step once. `mirage-ds eval` then attaches its
    results through the server, `compare --tracking-uri` reads them back, and nothing reaches the default store."""
    port, store = free_port(), tmp_path / "server"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "runs" / "b"
    steps = 30  # the server goes down after step 5 and restarts 10 steps later: 15 are left to log through it
    server = start_server(port, store)
    try:
        train = subprocess.Popen(_train_cmd(run_dir, f"max_steps={steps}", "tracking.retry_s=1"), cwd=tmp_path,
                                 env=_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
            assert train.poll() is None, train.stderr.read()[-3000:]
            time.sleep(0.05)
        stop_server(server, crash=True)  # the server goes away mid-run
        down_at = len(metrics.read_text().splitlines())
        while train.poll() is None and len(metrics.read_text().splitlines()) < down_at + 10:
            time.sleep(0.05)
        server = start_server(port, store)  # ... and comes back (during the run, or before its final flush)
        _, stderr = train.communicate(timeout=600)
        assert train.returncode == 0, stderr[-3000:]
        assert down_at < steps
        assert stderr.count("MLflow unreachable") == 1, stderr[-3000:]

        _eval(run_dir, _env(uri), cwd=tmp_path)
        name = _check_tracked(uri, run_dir, steps)
        cmp = subprocess.run([MIRAGE, "compare", "--experiment", "mirage-ds", "--tracking-uri", uri, "--out", str(tmp_path / "cmp")],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert cmp.returncode == 0, cmp.stderr[-2000:]
        assert name in cmp.stdout and "ASR before" in cmp.stdout
    finally:
        stop_server(server)
    assert not (tmp_path / "runs" / "mlflow.db").exists(), "with a server set, nothing goes to the default store"


def _replayed(step: int) -> dict[str, float]:
    """A step's metrics as every attempt at it logs them (the replay after a resume is exact)."""
    return {"train/loss": 1.0 / step, "train/lr": 1e-3 * step}


@pytest.mark.parametrize(("delivered", "checkpoint"), [(2, 3), (4, 2)], ids=["queue_lost_before_checkpoint", "delivered_past_checkpoint"])
def test_a_resumed_run_holds_one_value_per_step_in_mlflow(tmp_path: Path, delivered: int, checkpoint: int) -> None:
    """A run logs steps 1..5 to metrics.jsonl, MLflow got 1..``delivered`` before a kill -9 took the queue, and
    ``resume=auto`` continues from ``checkpoint`` to step 6 through the loop's own calls (truncate_metrics,
    build_tracker; the suite's store). MLflow ends with each step once: the kept steps it lacked delivered
    from metrics.jsonl, the replayed ones it held not sent again."""
    from mirage_ds.config import load_config
    from mirage_ds.tracking import build_tracker, truncate_metrics
    from mirage_ds.tracking.trackers import JsonlTracker

    out = tmp_path / "run"
    cfg = load_config("sft_full", [f"output_dir={out}", "resume=auto"])
    crashed = build_tracker(cfg, 0)
    for step in range(1, delivered + 1):
        crashed.log_metrics(_replayed(step), step)
    crashed.close("KILLED")  # what MLflow got before the kill
    local = JsonlTracker(out)  # ... while metrics.jsonl got every step the process logged
    for step in range(delivered + 1, 6):
        local.log_metrics(_replayed(step), step)
    local.close()

    truncate_metrics(out, checkpoint)
    resumed = build_tracker(cfg, 0)
    for step in range(checkpoint + 1, 7):
        resumed.log_metrics(_replayed(step), step)
    resumed.close("FINISHED")

    assert [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == list(range(1, 7))
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    for key in ("train/loss", "train/lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(step, _replayed(step)[key]) for step in range(1, 7)], key
    assert client.get_run(run_id).info.status == "FINISHED"


def _tracked_run(uri: str, out: Path, recipe: str, experiment: str, asr: float | None) -> None:
    """A run as the loop logs it, then eval's results attached through the queue (as `mirage-ds eval` does)."""
    tracker = MlflowTracker(out, uri, f"{recipe}:{out.name}", experiment, retry_s=1)
    tracker.log_params({"recipe": recipe})
    tracker.close()
    if asr is not None:
        assert log_results(out, {"eval/asr_before": asr, "eval/asr_after": asr / 2, "eval/utility": 0.5}, [], "eval")


def test_compare_shows_the_experiment_evaluated_last_and_says_where_it_looked(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "mlflow.db"
    uri = f"sqlite:///{path}"
    with pytest.raises(NothingToCompare, match=f"no MLflow store at {path} "):
        compare(tmp_path / "cmp", uri=uri)
    absent = subprocess.run([MIRAGE, "compare"], cwd=tmp_path, env=_env(None), capture_output=True, text=True, timeout=300)
    assert (absent.returncode, absent.stderr.split(" (")[0]) == (1, f"error: no MLflow store at {path}")

    _tracked_run(uri, tmp_path / "runs" / "untested", "sft_lora", "first", asr=None)
    with pytest.raises(NothingToCompare, match=rf"no evaluated runs at {uri} \(experiments: Default, first\)"):
        compare(tmp_path / "cmp", uri=uri)
    _tracked_run(uri, tmp_path / "runs" / "a", "sft_lora", "first", asr=0.25)
    _tracked_run(uri, tmp_path / "runs" / "b", "npo_lora", "second", asr=0.5)
    _tracked_run(uri, tmp_path / "runs" / "c", "rmu_lora", "second", asr=0.75)

    latest = compare(tmp_path / "cmp", uri=uri)
    assert latest.splitlines()[:2] == [f"Experiment 'second' at {uri}:", "(no --experiment: the experiment of the most "
                                       "recently started evaluated run, of: Default, first, second)"]
    rows = [line for line in latest.splitlines() if line.startswith("| ") and "ASR" not in line]
    assert rows == ["| npo_lora:b | 50.0 | 25.0 | n/a | n/a | 50.0 | n/a |",
                    "| rmu_lora:c | 75.0 | 37.5 | n/a | n/a | 50.0 | n/a |"]
    first = compare(tmp_path / "cmp", experiment="first", uri=uri)
    assert "| sft_lora:a | 25.0 |" in first and "untested" not in first and "no --experiment" not in first
    with pytest.raises(NothingToCompare, match=f"no MLflow experiment 'third' at {uri} \\(found: "):
        compare(tmp_path / "cmp", experiment="third", uri=uri)


def test_a_file_that_is_not_a_store_is_reported_with_its_path_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "mlflow.db"
    path.parent.mkdir()
    path.write_text("notes, not a database\n")
    proc = subprocess.run([MIRAGE, "compare"], cwd=tmp_path, env=_env(None), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {path} is not an MLflow store that can be opened: move it aside, or set "
                           "MLFLOW_TRACKING_URI to another store\n")
    assert path.read_text() == "notes, not a database\n"


def _tables(path: Path) -> list[str]:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.Error:
        return []


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL ``proc``'s whole session as soon as ``ready()`` holds (polled every 10 ms)."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} after 300 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.distributed
def test_run_killed_while_the_store_is_created_leaves_no_half_store(tmp_path: Path, synthetic_corpus) -> None:
    """A run is killed while its sqlite store is being created: the store's path stays empty and the next
    run creates it. A store half-created by a killed bare MLflow process (which later opens may fail on,
    "table ... already exists") holds no runs: the next run replaces it and says so, naming the path."""
    path = tmp_path / "store" / "mlflow.db"
    env = _env(f"sqlite:///{path}")
    building = path.with_name(f".{path.name}.creating")
    killed = subprocess.Popen(_train_cmd(tmp_path / "killed", "max_steps=3", ranks=1), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _kill_when(killed, lambda: len(_tables(building)) >= 1, "store being created")
    assert building.exists() and not path.exists()

    # The same store path, half-created the way a bare MLflow process leaves it when killed mid-way.
    code = f"from mlflow import MlflowClient; MlflowClient(tracking_uri='sqlite:///{path}')"
    bare = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _kill_when(bare, lambda: len(_tables(path)) >= 5, "MLflow tables")
    with sqlite3.connect(path) as db:
        assert "experiments" in _tables(path) and db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)

    run_dir = tmp_path / "next"
    proc = subprocess.run(_train_cmd(run_dir, "max_steps=3", ranks=1), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"MLflow store {path} was half-created" in proc.stderr
    assert "MLflow unreachable" not in proc.stderr, proc.stderr[-3000:]
    run = MlflowClient(tracking_uri=f"sqlite:///{path}").get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["recipe"] == "sft_lora"
    assert not building.exists()
