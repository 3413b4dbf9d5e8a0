"""The processes of a reproduction: each training run is the launcher, each evaluation ``mirage-ds eval``,
each its own process with its output in a log (``--jobs`` of them at once); then the table and figures.
``beside_base`` is ``make run``'s table: a trained run's row beside its starting model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mirage_ds.config import REPO_ROOT, ConfigError, load_config
from mirage_ds.eval.report import row_of
from mirage_ds.eval.table import Table
from mirage_ds.experiments.figures import first_word_figure, kshot_figure_of
from mirage_ds.experiments.plan import Reproduction


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _run(command: list[str], log: Path) -> None:
    """Run one step with its output in ``log``; a failure names the step and the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, env=_env(), cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-5:])
        raise ConfigError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}); see {log}:\n{tail}")


def train_command(recipe: str, out: Path, ranks: int, overrides: list[str]) -> list[str]:
    """The launcher command for one recipe: plain Python for one rank, the DeepSpeed launcher for more."""
    bin_dir = Path(sys.executable).parent
    start = [sys.executable] if ranks == 1 else [str(bin_dir / "deepspeed"), "--num_gpus", str(ranks)]
    return [*start, str(REPO_ROOT / "launcher" / "run.py"), "--recipe", recipe, f"output_dir={out}", *overrides]


def _eval_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "mirage-ds"), "eval", *args]


def base_model_and_corpus(recipe: str, overrides: list[str]) -> tuple[Path, Path]:
    """The model a recipe (a name or a run's ``config.yaml``) starts from (its ``model.path`` or the
    pretrained embedded base) and its corpus."""
    from mirage_ds.data.corpus import ensure_synthetic
    from mirage_ds.models.loading import resolve_model_path

    cfg = load_config(recipe, overrides)
    return resolve_model_path(cfg.model), ensure_synthetic(cfg.data.synthetic)


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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text(table.to_markdown())
    (out_dir / "table.json").write_text(json.dumps(table.to_json(**meta), indent=1) + "\n")
    return table


def reproduce(plan: Reproduction, progress: Any = print) -> Table:
    """Train every method from the base, evaluate base and methods, write the table and figures; returns the table."""
    common = [f"seed={plan.seed}", f"tracking.experiment={plan.experiment_name}", *plan.overrides]
    first = f"{plan.methods[0][1]}_{plan.variant}"
    progress(f"base: resolving the pretrained embedded base ({first}'s starting model)")
    base, corpus = base_model_and_corpus(first, common)

    def method(name: str, stem: str, sized: tuple[str, ...]) -> Path:
        recipe, run_dir = f"{stem}_{plan.variant}", plan.out_dir / stem
        if not (run_dir / "eval" / "eval.json").is_file():
            progress(f"{name}: training {recipe}")
            _run(train_command(recipe, run_dir, plan.ranks, [*sized, *common]), run_dir / "train.log")
            progress(f"{name}: evaluating")
            _run(_eval_command("--run", str(run_dir), "--name", name, *plan.evaluation_args), run_dir / "eval.log")
        return run_dir / "eval" / "eval.json"

    with ThreadPoolExecutor(max_workers=plan.jobs) as pool:
        base_eval = pool.submit(evaluate_base, base, corpus, plan.out_dir / "base" / "eval", plan.evaluation_args)
        evals = [(name, pool.submit(method, name, stem, sized)) for name, stem, sized in plan.sized_methods]
        results = [(name, json.loads(done.result().read_text())) for name, done in [("base", base_eval), *evals]]
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
    run_eval, base_eval = run_dir / "eval" / "eval.json", run_dir / "eval-base" / "eval.json"
    if not run_eval.is_file():
        raise ConfigError(f"no {run_eval}: evaluate the run first (mirage-ds eval --run {run_dir})")
    if not base_eval.is_file():
        evaluate_base(*base_model_and_corpus(str(run_dir / "config.yaml"), []), base_eval.parent, extra)
    recipe = load_config(str(run_dir / "config.yaml")).recipe
    return Table((row_of(json.loads(base_eval.read_text()), "base"), row_of(json.loads(run_eval.read_text()), recipe)))
