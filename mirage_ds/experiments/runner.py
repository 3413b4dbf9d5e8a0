"""The processes of a reproduction: each training run is the launcher, each evaluation ``mirage-ds eval``,
each its own process with its output in a log (``--jobs`` of them at once); then the table and figures.
``beside_base`` is ``make run``'s table: a trained run's row beside its starting model's.

Every child starts in the caller's directory and gets absolute paths, so a relative ``--out`` or override and
the default MLflow store (``runs/mlflow.db`` there) mean the same in every process. Each run directory records
the plan it was run for (``plan.PLAN_FILE``) and is reused only for that plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mirage_ds.atomic import write_json, write_text
from mirage_ds.config import ConfigError, load_config
from mirage_ds.eval.report import row_of
from mirage_ds.eval.table import Table
from mirage_ds.experiments.figures import first_word_figure, kshot_figure_of
from mirage_ds.experiments.plan import PLAN_FILE, Reproduction, plan_difference
from mirage_ds.resources import launcher_command


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _run(command: list[str], log: Path) -> None:
    """Run one step with its output in ``log``; a failure names the step and the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, env=_env(), stdout=handle, stderr=subprocess.STDOUT)  # in the caller's directory
    if done.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-5:])
        raise ConfigError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}); see {log}:\n{tail}")


def train_command(recipe: str, out: Path, ranks: int, overrides: list[str]) -> list[str]:
    """The launcher command for one recipe (``resources.launcher_command``), into ``out`` made absolute."""
    return [*launcher_command(ranks), "--recipe", recipe, f"output_dir={out.absolute()}", *overrides]


def _eval_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mirage_ds.cli.main", "eval", *args]


def base_model_and_corpus(recipe: str, overrides: list[str]) -> tuple[Path, Path]:
    """The model a recipe (a name or a run's ``config.yaml``) starts from (its ``model.path`` or the
    pretrained embedded base, built here when not cached: reproduce's build phase) and its corpus."""
    from mirage_ds.data.corpus import ensure_synthetic
    from mirage_ds.models.loading import ensure_model_path

    cfg = load_config(recipe, overrides)
    return ensure_model_path(cfg.model), ensure_synthetic(cfg.data.synthetic)


def evaluate_base(base: Path, corpus: Path, out: Path, extra: tuple[str, ...] = ()) -> Path:
    """Evaluate the starting model on the corpus's eval and utility sets into ``out`` (kept: built once)."""
    if not (out / "eval.json").is_file():
        _run(_eval_command("--model", str(base), "--data", str(corpus / "eval"), "--utility", str(corpus / "utility"),
                           "--out", str(out), "--name", "base", *extra), out / "eval.log")
    return out / "eval.json"


def write_table(results: list[tuple[str, dict[str, Any]]], out_dir: Path, meta: dict[str, Any]) -> Table:
    """Table 1 of ``(model, eval.json)`` pairs into ``out_dir``: ``table.md`` and ``table.json`` (``meta`` beside
    the rows)."""
    table = Table(tuple(row_of(result, name) for name, result in results))
    write_text(out_dir / "table.md", table.to_markdown())
    write_json(out_dir / "table.json", table.to_json(**meta), indent=1)
    return table


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_run_directories(out_dir: Path, records: dict[str, dict[str, Any]], force: bool) -> None:
    """Refuse every run directory under ``out_dir`` that holds a run of another plan than ``records`` asks for
    (or none recorded), naming both; with ``force``, remove them so that they rerun. A reproduction's rows
    come only from runs of its own plan."""
    stale = {name: plan_difference(_recorded(out_dir / name), record) for name, record in records.items()
             if (out_dir / name).is_dir() and any((out_dir / name).iterdir()) and _recorded(out_dir / name) != record}
    if stale and not force:
        by_difference: dict[str, list[str]] = {}
        for name, difference in stale.items():
            by_difference.setdefault(difference, []).append(name)
        found = "; ".join(f"{', '.join(names)}: {difference}" for difference, names in by_difference.items())
        raise ConfigError(f"{out_dir} holds runs of another plan ({found}): give another --out, or --force to rerun them")
    for name in stale:
        shutil.rmtree(out_dir / name)


def _claimed(run_dir: Path, record: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds the finished run of ``record`` (its plan recorded, its ``eval/eval.json``
    written). If not, the directory is emptied (a run cut short leaves checkpoints that a fresh launch
    refuses) and ``record`` written before anything runs there."""
    if _recorded(run_dir) == record and (run_dir / "eval" / "eval.json").is_file():
        return True
    shutil.rmtree(run_dir, ignore_errors=True)
    write_json(run_dir / PLAN_FILE, record)
    return False


def reproduce(plan: Reproduction, progress: Any = print, force: bool = False) -> Table:
    """Train every method from the base, evaluate base and methods, write the table and figures; returns the
    table. A run directory of another plan is an error before any method trains (``force``: rerun it)."""
    common = [*plan.run_overrides, f"tracking.experiment={plan.experiment_name}"]
    first = f"{plan.methods[0][1]}_{plan.variant}"
    progress(f"build: {first}'s starting model and corpus (a pretrained embedded base trains once, if not cached)")
    base, corpus = base_model_and_corpus(first, common)
    records = plan.records(base, corpus)
    check_run_directories(plan.out_dir, records, force)

    def base_evaluation() -> Path:
        run_dir = plan.out_dir / "base"
        _claimed(run_dir, records["base"])
        return evaluate_base(base, corpus, run_dir / "eval", plan.evaluation_args)

    def method(name: str, stem: str, sized: tuple[str, ...]) -> Path:
        recipe, run_dir = f"{stem}_{plan.variant}", plan.out_dir / stem
        if not _claimed(run_dir, records[stem]):
            progress(f"{name}: training {recipe}")
            _run(train_command(recipe, run_dir, plan.ranks, [*sized, *common]), run_dir / "train.log")
            progress(f"{name}: evaluating")
            _run(_eval_command("--run", str(run_dir), "--name", name, *plan.evaluation_args), run_dir / "eval.log")
        return run_dir / "eval" / "eval.json"

    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        base_eval = pool.submit(base_evaluation)
        evals = [(name, pool.submit(method, name, stem, sized)) for name, stem, sized in plan.sized_methods]
        try:
            results = [(name, json.loads(done.result().read_text())) for name, done in [("base", base_eval), *evals]]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed run ends the reproduction: the runs still queued never start
            raise
    figure1, figure3 = plan.out_dir / "figure1_first_words.png", plan.out_dir / "figure3_kshot.png"
    first_word_figure(corpus / "sft", figure1)
    drawn = kshot_figure_of(results, f"{plan.experiment_name}: ASR / RR under the one-word attack, by shots K", figure3)
    meta = {"figure1": str(figure1), "figure3": str(drawn) if drawn else None, "variant": plan.variant, "seed": plan.seed,
            "quick": plan.quick, "experiment": plan.experiment_name, "overrides": list(plan.overrides),
            "method_overrides": {name: list(sized) for name, _, sized in plan.sized_methods},
            "eval_args": list(plan.evaluation_args), "base": str(base), "corpus": str(corpus)}
    return write_table(results, plan.out_dir, meta)


def beside_base(run_dir: Path, extra: tuple[str, ...] = ()) -> Table:
    """Table 1 of a trained run and the model it started from (evaluated into ``RUN/eval-base`` once)."""
    run_dir = run_dir.absolute()
    run_eval, base_eval = run_dir / "eval" / "eval.json", run_dir / "eval-base" / "eval.json"
    if not run_eval.is_file():
        raise ConfigError(f"no {run_eval}: evaluate the run first (mirage-ds eval --run {run_dir})")
    if not base_eval.is_file():
        evaluate_base(*base_model_and_corpus(str(run_dir / "config.yaml"), []), base_eval.parent, extra)
    recipe = load_config(str(run_dir / "config.yaml")).recipe
    return Table((row_of(json.loads(base_eval.read_text()), "base"), row_of(json.loads(run_eval.read_text()), recipe)))
