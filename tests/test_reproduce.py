"""Table 1 in miniature: the rows read from eval.json, the table files and Figure 3, the quick sizes, the
shortcut dial's rows, table and figure (and one real sweep), and the pretrained base's cache key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import UNTRAINED
from mirage_ds.config import REPO_ROOT, ConfigError, TinyModelSpec, load_config, save_config
from mirage_ds.eval.comparison import kshot_points
from mirage_ds.eval.degenerate import DegenerateShare
from mirage_ds.eval.report import metrics_of, row_of
from mirage_ds.eval.table import Rate, Table
from mirage_ds.experiments.figures import kshot_figure_of, sweep_figure
from mirage_ds.experiments.plan import LORA, METHODS, PLAN_FILE, QUICK, QUICK_EVAL_ARGS, Reproduction, select_methods
from mirage_ds.experiments.runner import base_model_and_corpus, check_run_directories, train_command, write_table
from mirage_ds.experiments.sweep import Sweep, parse_sweep, sweep, sweep_rows
from mirage_ds.models.pretrained import base_key
from mirage_ds.tracking.store import store_uri

HEADER = ("| model | ASR before | ASR after (any of K) | RR before | RR after (any of K) | utility | degenerate |\n"
          "|---|---|---|---|---|---|---|")


def _estimate(value: float, low: float, high: float, n: int) -> dict[str, float | int]:
    return {"value": value, "low": low, "high": high, "n": n}


def _share(n: int, empty: int, off_template: int, repetitive: int) -> dict[str, float | int]:
    """A degenerate share as eval.json writes it (each kind a fraction of n)."""
    return DegenerateShare(n, empty, off_template, repetitive).to_dict()


# The headline rates as `mirage-ds eval` writes them (eval/metrics.py): any of the first k shots for k = 1..3
# (Figure 3's curve, its last point the table's "after"), the safe images' unsafe queries never attacked.
ASR = {"before": _estimate(0.5, 0.4, 0.6, 50), "per_shot": [_estimate(0.6, 0.5, 0.7, 50)] * 3,
       "any_of_k": _estimate(0.75, 0.6, 0.85, 50),
       "any_of_first": [_estimate(0.6, 0.5, 0.7, 50), _estimate(0.7, 0.55, 0.8, 50), _estimate(0.75, 0.6, 0.85, 50)]}
RR = {"before": _estimate(0.0, 0.0, 0.0, 50), "per_shot": [_estimate(0.125, 0.05, 0.2, 50)],
      "any_of_k": _estimate(0.125, 0.05, 0.2, 50), "any_of_first": [_estimate(0.125, 0.05, 0.2, 50)]}
EVAL = {
    "model": "npo",
    "asr": {**ASR, "subset": "unsafes"},
    "rr": {**RR, "subset": "safe_safes"},
    "subsets": {
        "unsafes": {**ASR, "metric": "asr", "degenerate": {"before": _share(50, 1, 0, 1), "after": _share(150, 0, 3, 0)}},
        "safe_safes": {**RR, "metric": "rr", "degenerate": {"before": _share(50, 0, 0, 0), "after": _share(50, 5, 0, 0)}},
        "safe_unsafes": {"metric": "rr", "before": _estimate(0.0, 0.0, 0.0, 50), "per_shot": [], "any_of_k": None,
                         "degenerate": {"before": _share(50, 50, 0, 0), "after": None}},
    },
    "shortcut": None,
    "utility": _estimate(0.6543, 0.6, 0.7, 200),
}


def test_row_is_percent_with_intervals_and_the_headline_degenerate_share() -> None:
    row = row_of(EVAL, "NPO")
    assert row.model == "NPO"
    assert [row.value(k) for k in ("asr_before", "asr_after", "rr_before", "rr_after", "utility")] == [50.0, 75.0, 0.0, 12.5, 65.43]
    assert row.rates["asr_after"] == Rate(75.0, (60.0, 85.0)) and row.interval("utility") == (60.0, 70.0)
    # unsafes 2/50 + 3/150, safe_safes 0/50 + 5/50; safe_unsafes is not a headline row: 10 / 300.
    assert row.rates["degenerate"] == Rate(round(100 * 10 / 300, 2))


def test_table_files(tmp_path: Path) -> None:
    table = write_table([("base", EVAL), ("NPO", EVAL)], tmp_path, {"seed": 0})
    text = table.to_markdown()
    assert text.startswith(HEADER) and len(text.strip().splitlines()) == 4
    assert "| NPO | 50.0 [40, 60] | 75.0 [60, 85] | 0.0 [0, 0] | 12.5 [5, 20] | 65.4 [60, 70] | 3.3 |" in text
    data = json.loads((tmp_path / "table.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["base", "NPO"] and data["seed"] == 0
    assert data["rows"][1]["asr_after"] == 75.0 and data["rows"][1]["ci95"]["asr_after"] == [60.0, 85.0]
    assert data["rows"][1]["degenerate"] == 3.33 and data["rows"][1]["marked"] == []
    assert (tmp_path / "table.md").read_text() == text


def test_base_key_follows_model_spec_and_recipe() -> None:
    default = base_key(TinyModelSpec())
    assert default == base_key(TinyModelSpec())
    assert default != base_key(TinyModelSpec(seed=1))
    assert default != base_key(TinyModelSpec(), recipe="sft_full")


def test_every_embedded_recipe_starts_from_the_pretrained_base_but_the_base_itself() -> None:
    for recipe in ("npo_lora", "npo_full", "rmu_full", "mixed_sft_full", "posthoc_sft_lora", "unsafe_filter_full"):
        assert load_config(recipe, []).model.embedded_base == "pretrained", recipe
    assert load_config("base_full", []).model.embedded_base == "random"


def test_train_command_uses_the_launcher_and_an_absolute_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    one = train_command("npo_full", Path("out"), 1, ["seed=1"])
    assert one[:2] == [sys.executable, str(REPO_ROOT / "launcher" / "run.py")]
    assert one[2:] == ["--recipe", "npo_full", f"output_dir={tmp_path / 'out'}", "seed=1"]
    two = train_command("npo_full", Path("out"), 2, [])
    assert two[:5] == [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"] and two[5] == "--master_port"


def test_figure3_points_are_the_eval_json_rates_by_shots(tmp_path: Path) -> None:
    metrics = metrics_of(EVAL)
    asr = [(p.k, p.value, p.low, p.high) for p in kshot_points(metrics, "asr")]
    assert asr == [(0, 0.5, 0.4, 0.6), (1, 0.6, 0.5, 0.7), (2, 0.7, 0.55, 0.8), (3, 0.75, 0.6, 0.85)]
    assert [(p.k, p.value) for p in kshot_points(metrics, "rr")] == [(0, 0.0), (1, 0.125)]
    figure = kshot_figure_of([("base", EVAL), ("NPO", EVAL)], "title", tmp_path / "figure3_kshot.png")
    assert figure == tmp_path / "figure3_kshot.png" and figure.stat().st_size > 0


def test_quick_runs_fewer_sft_steps_and_evaluates_fewer_items() -> None:
    assert set(QUICK) == {"Unsafe-Filter", "Mixed-SFT", "Posthoc-SFT"}  # NPO and RMU keep their steps
    quick = Reproduction(Path("out"), quick=True, eval_args=("--batch-size=8",))
    assert quick.experiment_name == "reproduce-quick-full-seed0"
    assert quick.evaluation_args == (*QUICK_EVAL_ARGS, "--batch-size=8")
    for (name, stem, sized), (_, _, fewer) in zip(METHODS, quick.sized_methods):
        full, short = load_config(f"{stem}_full", list(sized)), load_config(f"{stem}_full", list(fewer))
        assert short.max_steps < full.max_steps if name in QUICK else short.max_steps == full.max_steps, name
        assert (short.optim, short.micro_batch_size) == (full.optim, full.micro_batch_size), name
    assert Reproduction(Path("out")).sized_methods == METHODS


def test_lora_variant_applies_its_rates_after_the_methods_sizes() -> None:
    lora = dict((name, sized) for name, _, sized in Reproduction(Path("out"), variant="lora").sized_methods)
    assert set(LORA) == {name for name, _, _ in METHODS}
    for name, stem, sized in METHODS:
        full, adapted = load_config(f"{stem}_lora", list(sized)), load_config(f"{stem}_lora", list(lora[name]))
        assert adapted.optim.lr > full.optim.lr and adapted.model.lora is not None, name


def test_sweep_keys_and_methods_parse(tmp_path: Path) -> None:
    assert parse_sweep("what_rate=0.5, 0.7,0.89") == Sweep("data.synthetic.what_rate", ("0.5", "0.7", "0.89"))
    assert parse_sweep("data.synthetic.can_rate=0.3") == Sweep("data.synthetic.can_rate", ("0.3",))
    assert parse_sweep("optim.lr=1e-4,3e-4").key == "optim.lr"
    for bad in ("what_rat=0.5", "what_rate=", "what_rate"):
        with pytest.raises(ConfigError, match="--sweep"):
            parse_sweep(bad)
    with pytest.raises(ConfigError, match="what_rate=2"):  # checked against every recipe before anything trains
        sweep(Reproduction(tmp_path / "repro"), parse_sweep("what_rate=0.5,2"))
    assert not (tmp_path / "repro").exists()
    assert [name for name, _, _ in select_methods("NPO, Mixed-SFT")] == ["Mixed-SFT", "NPO"]
    with pytest.raises(ConfigError, match="unknown SFT"):
        select_methods("SFT")


def test_a_corpus_override_keeps_the_base() -> None:
    # resolve_model_path reads only cfg.model, and base_key only the base recipe: a corpus value changes
    # the methods' data and the eval set, never which base they start from.
    for stem in ("mixed_sft_full", "npo_full"):
        moved = load_config(stem, ["data.synthetic.what_rate=0.5", "data.synthetic.can_rate=0.3"])
        assert moved.model == load_config(stem, []).model
        assert moved.data.synthetic != load_config(stem, []).data.synthetic


def test_sweep_rows_table_and_figure(tmp_path: Path) -> None:
    dial = Sweep("data.synthetic.what_rate", ("0.5", "0.89"))
    low = {**EVAL, "asr": {**EVAL["asr"], "any_of_k": _estimate(0.25, 0.1, 0.4, 50)}}
    tables = [Table((row_of(EVAL, "base"), row_of(low, "NPO"))), Table((row_of(EVAL, "base"), row_of(EVAL, "NPO")))]
    table = sweep_rows(dial, tables)
    rows = table.to_json()["rows"]
    assert [(r["value"], r["model"], r["asr_after"], r["rr_after"]) for r in rows] == [
        (0.5, "base", 75.0, 12.5), (0.5, "NPO", 25.0, 12.5), (0.89, "base", 75.0, 12.5), (0.89, "NPO", 75.0, 12.5)]
    assert rows[1]["ci95"]["asr_after"] == [10.0, 40.0] and rows[1]["asr_before"] == 50.0
    text = table.to_markdown()
    assert text.splitlines()[0] == ("| value | model | ASR before | ASR after (any of K) | RR before | RR after (any of K) "
                                    "| utility | degenerate |")
    assert "| 0.5 | NPO | 50.0 [40, 60] | 25.0 [10, 40] | 0.0 [0, 0] | 12.5 [5, 20] | 65.4 [60, 70] | 3.3 |" in text
    assert sweep_figure(table, dial.key, tmp_path / "sweep.png").stat().st_size > 0
    named = sweep_rows(Sweep("model.lora.r", ("a", "b")), [Table((row_of(EVAL, "NPO"),))] * 2)
    assert sweep_figure(named, "model.lora.r", tmp_path / "named.png").stat().st_size > 0


@pytest.mark.slow  # two reproductions, each training and evaluating
def test_sweep_end_to_end_then_resumes(tmp_path: Path) -> None:
    """The real dial on the untrained tiny model (UNTRAINED): two values, one method, two steps each."""
    out = tmp_path / "repro"
    command = [str(Path(sys.executable).parent / "mirage-ds"), "reproduce", "--out", str(out), "--methods", "Mixed-SFT",
               "--sweep", "what_rate=0.5,0.89", "--set", UNTRAINED, "--set", "max_steps=2", "--set", "micro_batch_size=2",
               "--eval-arg=--limit=4", "--eval-arg=--max-new-tokens=8", "--experiment", f"dial-{tmp_path.name}",
               "--jobs", "2"]  # the base's evaluation and the method's run side by side
    done = subprocess.run(command, cwd=REPO_ROOT, env=os.environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("| value | model |")
    data = json.loads((out / "sweep.json").read_text())
    assert data["key"] == "data.synthetic.what_rate" and data["values"] == [0.5, 0.89]
    assert [(r["value"], r["model"]) for r in data["rows"]] == [(0.5, "base"), (0.5, "Mixed-SFT"), (0.89, "base"), (0.89, "Mixed-SFT")]
    assert (out / "sweep.png").is_file()
    for value in ("0.5", "0.89"):
        run = out / f"sweep-data.synthetic.what_rate-{value}"
        table = json.loads((run / "table.json").read_text())
        assert f"data.synthetic.what_rate={value}" in table["overrides"] and table["figure3"] == str(run / "figure3_kshot.png")
        assert (run / "figure3_kshot.png").is_file() and (run / "figure1_first_words.png").is_file()
        assert load_config(str(run / "mixed_sft" / "config.yaml")).data.synthetic.what_rate == float(value)
    trained = (out / "sweep-data.synthetic.what_rate-0.5" / "mixed_sft" / "train.log").stat().st_mtime
    start = time.monotonic()
    again = subprocess.run(command, cwd=REPO_ROOT, env=os.environ, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == done.stdout
    assert (out / "sweep-data.synthetic.what_rate-0.5" / "mixed_sft" / "train.log").stat().st_mtime == trained
    assert time.monotonic() - start < 60  # nothing retrained or re-evaluated


def test_jobs_below_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--jobs 0"):
        Reproduction(out_dir=tmp_path, jobs=0)


def _finished(out: Path, *runs: str) -> None:
    """Runs as a finished reproduction leaves them: eval/eval.json in each run directory."""
    for run in runs:
        (out / run / "eval").mkdir(parents=True, exist_ok=True)
        (out / run / "eval" / "eval.json").write_text(json.dumps(EVAL))


def _reproduce(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mirage_ds.cli.main", "reproduce", "--out", str(out), "--methods", "NPO",
               "--set", UNTRAINED, *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=os.environ, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three reproduce processes; each stops or reuses before anything trains
def test_runs_of_another_plan_are_refused_naming_both_never_reused(tmp_path: Path) -> None:
    """Issue 19.1: seed 0's finished runs in OUT, then ``reproduce --seed 1 --out OUT`` used to print seed 0's
    numbers as seed 1's. A run directory is reused only for the plan it records."""
    out = tmp_path / "repro"
    _finished(out, "base", "npo")  # as today's main leaves them: eval.json, no plan recorded
    unrecorded = _reproduce(out, "--seed", "1")
    assert unrecorded.returncode == 2, unrecorded.stdout
    assert "records no plan" in unrecorded.stderr and not (out / "table.json").exists()

    seed0 = Reproduction(out, methods=select_methods("NPO"), overrides=(UNTRAINED,))
    for run, record in seed0.records(*base_model_and_corpus("npo_full", [UNTRAINED])).items():
        (out / run / PLAN_FILE).write_text(json.dumps(record))
    refused = _reproduce(out, "--seed", "1")
    assert refused.returncode == 2, refused.stdout
    # Only the method differs (the base's evaluation does not depend on the seed), and only by its seed.
    assert f"error: {out} holds runs of another plan (npo: overrides: recorded seed=0, asked seed=1)" in refused.stderr

    kept = _reproduce(out, "--seed", "0")  # the recorded plan: its finished runs are the table's rows
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert json.loads((out / "table.json").read_text())["seed"] == 0 and not (out / "npo" / "train.log").exists()


def test_force_removes_the_runs_of_another_plan_so_that_they_rerun(tmp_path: Path) -> None:
    records = {"base": {"model": "m", "eval_args": []}, "npo": {"recipe": "npo_full", "overrides": ["seed=1"]}}
    _finished(tmp_path, "base", "npo", "rmu")
    for run, overrides in (("base", None), ("npo", ["seed=0"])):
        record = records[run] if overrides is None else {**records[run], "overrides": overrides}
        (tmp_path / run / PLAN_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"\(npo: overrides: recorded seed=0, asked seed=1\)"):
        check_run_directories(tmp_path, records, force=False)
    check_run_directories(tmp_path, records, force=True)
    assert (tmp_path / "base" / "eval" / "eval.json").is_file() and not (tmp_path / "npo").exists()
    assert (tmp_path / "rmu").is_dir()  # not a run of this plan's methods: left alone


def test_the_default_store_is_absolute_in_the_callers_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19.8: the URI a process hands to its children names one store, wherever they start."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/x.db")
    assert store_uri() == f"sqlite:///{tmp_path / 'stores' / 'x.db'}"


@pytest.mark.slow  # one evaluation process
def test_paths_are_the_callers_in_a_reproduce_started_outside_the_repository(tmp_path: Path) -> None:
    """Issue 19.8: ``mirage-ds reproduce`` started elsewhere with a relative path. Its children used to start in
    the package's source tree and write there, and the caller then failed reading its own relative path."""
    caller, run = tmp_path / "caller", tmp_path / "caller" / "npo"
    save_config(load_config("npo_full", [UNTRAINED]), run / "config.yaml")  # a trained, evaluated run: its row
    _finished(caller, "npo")
    command = [sys.executable, "-m", "mirage_ds.cli.main", "reproduce", "--beside", "npo", "--eval-arg=--limit=2",
               "--eval-arg=--max-new-tokens=4"]
    done = subprocess.run(command, cwd=caller, env=os.environ, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "eval-base" / "eval.json").is_file()  # the child wrote into the caller's npo/, not elsewhere
    assert [line.split(" |")[0] for line in done.stdout.splitlines()[2:4]] == ["| base", "| npo_full"]
