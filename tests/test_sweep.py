"""Sweep files -> numbered array tasks: order, count, argument lines, one-line errors, and the sweep's MLflow
parent run created once. No Slurm needed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mirage_ds.cli.sweep import SweepError, Task, expand, load_sweep, parse_sweep, render_value

SWEEP = {
    "name": "grid",
    "recipes": ["sft_lora", "npo_lora"],
    "grid": {"optim.lr": [1.0e-3, 3.0e-3], "micro_batch_size": [2, 4]},
    "seeds": [0, 1],
    "overrides": {"max_steps": 3},
    "output_root": "/tmp/runs",
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirage_ds.cli.sweep", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _parent_cli(path: Path, uri: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mirage_ds.cli.sweep", str(path), "--parent"], cwd=REPO, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_expansion_order_is_recipes_then_grid_last_key_fastest_then_seeds(tmp_path: Path) -> None:
    tasks = expand(load_sweep(_write(tmp_path, SWEEP)))
    assert len(tasks) == 2 * 2 * 2 * 2
    assert [t.index for t in tasks] == list(range(16))
    assert tasks[0] == Task(0, "sft_lora", ("max_steps=3", "optim.lr=0.001", "micro_batch_size=2", "seed=0"),
                            "/tmp/runs/grid/000-sft_lora-lr0.001-micro_batch_size2-seed0")
    rows = [(t.recipe, t.overrides[1], t.overrides[2], t.overrides[3]) for t in tasks]
    assert rows[:4] == [
        ("sft_lora", "optim.lr=0.001", "micro_batch_size=2", "seed=0"),
        ("sft_lora", "optim.lr=0.001", "micro_batch_size=2", "seed=1"),
        ("sft_lora", "optim.lr=0.001", "micro_batch_size=4", "seed=0"),
        ("sft_lora", "optim.lr=0.001", "micro_batch_size=4", "seed=1"),
    ]
    assert rows[4][1] == "optim.lr=0.003"
    assert {r[0] for r in rows[:8]} == {"sft_lora"} and {r[0] for r in rows[8:]} == {"npo_lora"}
    assert tasks[15].output_dir == "/tmp/runs/grid/015-npo_lora-lr0.003-micro_batch_size4-seed1"
    assert len({t.output_dir for t in tasks}) == 16
    assert tasks[5].argv() == ["--recipe", "sft_lora", *tasks[5].overrides, f"output_dir={tasks[5].output_dir}"]


def test_expansion_is_deterministic_and_optional_parts_default(tmp_path: Path) -> None:
    minimal = {"name": "one", "recipes": ["sft_lora"]}
    tasks = expand(parse_sweep(minimal, tmp_path / "m.yaml"))
    assert tasks == [Task(0, "sft_lora", (), "runs/one/000-sft_lora")]
    assert expand(load_sweep(_write(tmp_path, SWEEP))) == expand(load_sweep(_write(tmp_path, SWEEP)))


@pytest.mark.parametrize("value", [1.0e-3, 3, True, None, "adamw", "1e-4", "a b", "x: y", [1, 2], {"a": 1}, ""])
def test_rendered_values_parse_back_like_launcher_overrides(value: object) -> None:
    from mirage_ds.config import apply_overrides

    assert apply_overrides({}, [f"k={render_value(value)}"]) == {"k": value}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**SWEEP, "seed": [1]}, "unknown key 'seed' (allowed: name, recipes, grid, seeds, overrides, output_root)"),
        ({**SWEEP, "recipes": []}, "key 'recipes': expected a non-empty list"),
        ({**SWEEP, "grid": {"optim.lr": []}}, "key 'grid.optim.lr': expected a non-empty list of values"),
        ({**SWEEP, "grid": {"seed": [1, 2]}}, "key 'grid.seed': set by 'seeds'"),
        ({**SWEEP, "overrides": {"output_dir": "/x"}}, "key 'overrides.output_dir': set by the sweep"),
        ({**SWEEP, "overrides": {"optim.lr": 1.0}}, "key 'overrides.optim.lr': also in 'grid'"),
        ({**SWEEP, "seeds": ["a"]}, "key 'seeds': expected a non-empty list of integers"),
        ({**SWEEP, "name": "a/b"}, "key 'name': 'a/b' must be a plain directory name"),
    ],
)
def test_bad_sweep_is_one_line_naming_file_and_key(tmp_path: Path, data: dict, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_cli_count_task_and_shell(tmp_path: Path) -> None:
    path = _write(tmp_path, {**SWEEP, "recipes": ["sft_lora"], "grid": {"optim.lr": [1.0e-3, 3.0e-3]}})
    count = _cli(str(path), "--count")
    assert count.returncode == 0, count.stderr
    assert count.stdout.strip() == "4"
    line = _cli(str(path), "--task", "3")
    assert shlex.split(line.stdout) == ["--recipe", "sft_lora", "max_steps=3", "optim.lr=0.003", "seed=1",
                                        "output_dir=/tmp/runs/grid/003-sft_lora-lr0.003-seed1"]
    shell = _cli(str(path), "--task", "3", "--shell")
    script = f"{shell.stdout}\nprintf '%s\\n' \"$MIRAGE_SWEEP_NAME\" \"$MIRAGE_SWEEP_TASK\" \"$MIRAGE_TASK_OUTPUT_DIR\" \"${{MIRAGE_TASK_ARGS[@]}}\""
    values = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert values == ["grid", "3", "/tmp/runs/grid/003-sft_lora-lr0.003-seed1", *shlex.split(line.stdout)]
    out_of_range = _cli(str(path), "--task", "4")
    assert out_of_range.returncode == 2
    assert out_of_range.stderr.strip() == f"error: {path}: task 4 out of range (the sweep has 4 tasks)"


def test_cli_count_validates_every_task_config(tmp_path: Path) -> None:
    path = _write(tmp_path, {**SWEEP, "grid": {"optim.lrr": [1.0]}})
    proc = _cli(str(path), "--count")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {path}: task 0 (/tmp/runs/grid/000-sft_lora-lrr1.0-seed0): override 'optim.lrr=1.0': unknown key 'optim.lrr'")
    assert len(proc.stderr.strip().splitlines()) == 1
    unknown = _write(tmp_path, {**SWEEP, "recipe": ["sft_lora"]})
    proc = _cli(str(unknown), "--count")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {unknown}: unknown key 'recipe' (allowed: name, recipes, grid, seeds, overrides, output_root)"


def test_sample_sweep_is_valid() -> None:
    proc = _cli("slurm/sweeps/sample.yaml", "--count")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(expand(load_sweep(REPO / "slurm" / "sweeps" / "sample.yaml")))


def test_parent_run_is_created_once_by_concurrent_callers_and_kept(tmp_path: Path) -> None:
    """What slurm/submit does before sbatch (and sweep.sh in each task): three callers at once, on a store
    that does not exist yet, make one store, one experiment and one parent run; a later call reuses it."""
    from mlflow import MlflowClient

    path = _write(tmp_path, {**SWEEP, "output_root": str(tmp_path / "runs"), "overrides": {"tracking.experiment": "sw"}})
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    callers = [_parent_cli(path, uri) for _ in range(3)]
    outputs = [caller.communicate(timeout=300) for caller in callers]
    assert [caller.returncode for caller in callers] == [0, 0, 0], [err for _, err in outputs]
    ids = {out.strip() for out, _ in outputs}
    assert len(ids) == 1
    record = json.loads((tmp_path / "runs" / "grid" / "mlflow_parent.json").read_text())
    assert (record["tracking_uri"], record["run_id"]) == (uri, ids.pop())
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sw")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`mirage.sweep_parent` = 'grid'")
    assert [run.info.run_id for run in parents] == [record["run_id"]]
    assert parents[0].data.tags["mirage.output_dir"] == str(tmp_path / "runs" / "grid")
    again = _parent_cli(path, uri)
    assert again.communicate(timeout=300)[0].strip() == record["run_id"]


def test_untracked_sweep_has_no_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, {**SWEEP, "output_root": str(tmp_path / "runs"), "overrides": {"tracking.mlflow": False}})
    proc = _cli(str(path), "--parent")
    assert (proc.returncode, proc.stdout) == (0, "\n"), proc.stderr
    assert not (tmp_path / "runs" / "grid" / "mlflow_parent.json").exists()
