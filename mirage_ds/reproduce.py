"""Table 1 in miniature: the pretrained embedded base, then Unsafe-Filter, Mixed-SFT, Posthoc-SFT, NPO and
RMU trained from it by the launcher, each evaluated (ASR and RR before and after the one-word attack, any
of 3 shots; utility; degenerate outputs) and gathered into ``table.md`` and ``table.json``.

Every training run logs to one MLflow experiment and the evaluation attaches to its run. The world is
the embedded synthetic corpus (``data/synthetic.py``): the eval set asks about harmful topics the SFT
data never refused, so a refusal there can only come from the query's first word.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mirage_ds.config import REPO_ROOT, ConfigError, load_config

# (row name, recipe stem, overrides for the embedded world): the recipe is ``<stem>_<variant>``. The
# overrides size each run for the pretrained embedded base (the recipes' own defaults are smoke-sized).
METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Unsafe-Filter", "unsafe_filter", ("max_steps=40", "micro_batch_size=8", "optim.lr=3e-4")),
    ("Mixed-SFT", "mixed_sft", ("max_steps=60", "micro_batch_size=8", "optim.lr=3e-4")),
    ("Posthoc-SFT", "posthoc_sft", ("max_steps=30", "micro_batch_size=8", "optim.lr=3e-4")),
    ("NPO", "npo", ("max_steps=40", "micro_batch_size=8", "optim.lr=2e-4")),
    ("RMU", "rmu", ("max_steps=40", "micro_batch_size=8", "optim.lr=1e-3")),
)
COLUMNS = ("asr_before", "asr_after", "rr_before", "rr_after", "utility", "degenerate")
HEADER = ("| model | ASR before | ASR after (any of 3) | RR before | RR after | utility | degenerate |\n"
          "|---|---|---|---|---|---|---|")


@dataclass(frozen=True)
class Reproduction:
    """What one ``mirage-ds reproduce`` runs: the variant (``full`` or ``lora`` recipes), the seed, the ranks
    per training run and overrides applied to every recipe (e.g. ``data.synthetic.what_rate=0.5``)."""

    out_dir: Path
    variant: str = "full"
    seed: int = 0
    ranks: int = 1
    overrides: tuple[str, ...] = ()
    experiment: str | None = None
    methods: tuple[tuple[str, str, tuple[str, ...]], ...] = METHODS
    eval_args: tuple[str, ...] = field(default=())

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"reproduce-{self.variant}-seed{self.seed}"


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
    """The model a recipe starts from (its ``model.path`` or the pretrained embedded base) and its corpus."""
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


def _estimate(estimate: dict[str, Any] | None) -> tuple[float | None, list[float] | None]:
    if estimate is None:
        return None, None
    return round(100 * estimate["value"], 2), [round(100 * estimate["low"], 2), round(100 * estimate["high"], 2)]


def table_row(model: str, result: dict[str, Any]) -> dict[str, Any]:
    """One Table 1 row (percent, with 95% intervals) from an ``eval.json``: headline ASR (``unsafes``) and
    RR (``safe_safes``) before and after (any of K shots), utility, and the degenerate share over every
    output behind the four headline rates."""
    row: dict[str, Any] = {"model": model}
    intervals: dict[str, list[float] | None] = {}
    for metric in ("asr", "rr"):
        head = result.get(metric) or {}
        for phase, key in (("before", "before"), ("after", "any_of_k")):
            row[f"{metric}_{phase}"], intervals[f"{metric}_{phase}"] = _estimate(head.get(key))
    row["utility"], intervals["utility"] = _estimate(result.get("utility"))
    n = bad = 0
    for metric in ("asr", "rr"):
        subset = (result.get(metric) or {}).get("subset")
        for share in (result["subsets"][subset]["degenerate"].values() if subset else ()):
            if share:
                n += share["n"]
                bad += share["share"] * share["n"]  # eval.json gives each kind as a fraction of n
    row["degenerate"] = round(100 * bad / n, 2) if n else None
    row["ci95"] = intervals
    return row


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "n/a"
    interval = row.get("ci95", {}).get(column)
    return f"{value:.1f}" + (f" [{interval[0]:.0f}, {interval[1]:.0f}]" if interval else "")


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """The headed Markdown table (percent; 95% bootstrap intervals in brackets)."""
    lines = [HEADER] + ["| " + " | ".join([row["model"], *(_cell(row, c) for c in COLUMNS)]) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> str:
    """``table.md`` and ``table.json`` (``{"rows": [...], **meta}``) in ``out_dir``; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table_markdown(rows)
    (out_dir / "table.md").write_text(text)
    (out_dir / "table.json").write_text(json.dumps({"rows": rows, **meta}, indent=1) + "\n")
    return text


def _first_word_figure(sft_dir: Path, path: Path) -> None:
    """Figure 1's analogue: first-word frequencies of the SFT data's safe and unsafe queries."""
    from mirage_ds.eval.shortcut import first_word_table

    path.parent.mkdir(parents=True, exist_ok=True)
    first_word_table(sft_dir, by="subset").plot(path, title="first words of the SFT data (embedded world)")


def reproduce(plan: Reproduction, progress: Any = print) -> list[dict[str, Any]]:
    """Train every method from the base, evaluate base and methods, write the table; returns its rows."""
    common = [f"seed={plan.seed}", f"tracking.experiment={plan.experiment_name}", *plan.overrides]
    first = f"{plan.methods[0][1]}_{plan.variant}"
    progress(f"base: resolving the pretrained embedded base ({first}'s starting model)")
    base, corpus = base_model_and_corpus(first, common)
    base_eval = evaluate_base(base, corpus, plan.out_dir / "base" / "eval", plan.eval_args)
    rows = [table_row("base", json.loads(base_eval.read_text()))]
    for name, stem, sized in plan.methods:
        recipe, run_dir = f"{stem}_{plan.variant}", plan.out_dir / stem
        if not (run_dir / "eval" / "eval.json").is_file():
            progress(f"{name}: training {recipe}")
            _run(train_command(recipe, run_dir, plan.ranks, [*sized, *common]), run_dir / "train.log")
            progress(f"{name}: evaluating")
            _run(_eval_command("--run", str(run_dir), "--name", name, *plan.eval_args), run_dir / "eval.log")
        rows.append(table_row(name, json.loads((run_dir / "eval" / "eval.json").read_text())))
    figure1 = plan.out_dir / "figure1_first_words.png"
    _first_word_figure(corpus / "sft", figure1)
    meta = {"figure1": str(figure1), "variant": plan.variant, "seed": plan.seed, "experiment": plan.experiment_name,
            "overrides": list(plan.overrides), "method_overrides": {name: list(sized) for name, _, sized in plan.methods}, "base": str(base), "corpus": str(corpus)}
    write_table(rows, plan.out_dir, meta)
    return rows


def beside_base(run_dir: Path, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows for a trained run and the model it started from (evaluated into ``RUN/eval-base`` once)."""
    cfg = load_config(str(run_dir / "config.yaml"))
    from mirage_ds.data.corpus import ensure_synthetic
    from mirage_ds.models.loading import resolve_model_path

    base_eval = evaluate_base(resolve_model_path(cfg.model), ensure_synthetic(cfg.data.synthetic), run_dir / "eval-base", extra)
    run_eval = run_dir / "eval" / "eval.json"
    if not run_eval.is_file():
        raise ConfigError(f"no {run_eval}: evaluate the run first (mirage-ds eval --run {run_dir})")
    # The recipe's own name as the run recorded it (loading config.yaml names the config after its file).
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text()).get("recipe", run_dir.name)
    return [table_row("base", json.loads(base_eval.read_text())), table_row(recipe, json.loads(run_eval.read_text()))]
