"""Table 1 in miniature: the pretrained embedded base, then Unsafe-Filter, Mixed-SFT, Posthoc-SFT, NPO and
RMU trained from it by the launcher, each evaluated (ASR and RR before and after the one-word attack, any
of 3 shots; utility; degenerate outputs) and gathered into ``table.md`` and ``table.json``.

Every training run logs to one MLflow experiment and the evaluation attaches to its run. The world is
the embedded synthetic corpus (``data/synthetic.py``): the eval set asks about harmful topics the SFT
data never refused, so a refusal there can only come from the query's first word. Figure 1 (first words
of the SFT data) and Figure 3 (ASR / RR against the attack's shots K) are drawn beside the table.

The shortcut dial (``sweep``) reruns every method with one override per value (e.g. the planted
``data.synthetic.what_rate``), each value an ordinary reproduction directory, and gathers ASR and RR
after the attack against the value into ``sweep.json`` and ``sweep.png``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mirage_ds.config import REPO_ROOT, ConfigError, load_config
from mirage_ds.specs.synthetic import SyntheticSpec

# (row name, recipe stem, overrides for the embedded world): the recipe is ``<stem>_<variant>``. The
# overrides size each run for the pretrained embedded base (the recipes' own defaults are smoke-sized).
METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Unsafe-Filter", "unsafe_filter", ("max_steps=40", "micro_batch_size=8", "optim.lr=3e-4")),
    ("Mixed-SFT", "mixed_sft", ("max_steps=90", "micro_batch_size=8", "optim.lr=3e-4")),
    # Fewer samples than Mixed-SFT (540 vs 720), as the paper's Posthoc-SFT sees VLGuard plus 5k instructions.
    ("Posthoc-SFT", "posthoc_sft", ("max_steps=90", "micro_batch_size=6", "optim.lr=3e-4")),
    ("NPO", "npo", ("max_steps=30", "micro_batch_size=8", "optim.lr=1.5e-4")),
    # The official preset's retain CE term (paper_scale: loss.retain_ce_weight=1) keeps answers fluent.
    ("RMU", "rmu", ("max_steps=40", "micro_batch_size=8", "optim.lr=1e-3", "loss.retain_ce_weight=1")),
)
# VARIANT=lora: each method's overrides above, then these (the adapters learn at about 7x the rate).
LORA: dict[str, tuple[str, ...]] = {
    "Unsafe-Filter": ("optim.lr=2e-3",),
    "Mixed-SFT": ("optim.lr=2e-3",),
    "Posthoc-SFT": ("optim.lr=2e-3",),
    "NPO": ("max_steps=40", "optim.lr=1.5e-3"),
    "RMU": ("optim.lr=5e-3",),
}
# --quick: each method's overrides above, then these (fewer steps), and every evaluation on the first
# QUICK_EVAL_ARGS' items per subset, so that with the base cached the table takes minutes, not tens.
QUICK: dict[str, tuple[str, ...]] = {
    "Unsafe-Filter": ("max_steps=20",),
    "Mixed-SFT": ("max_steps=60",),
    "Posthoc-SFT": ("max_steps=50",),
    # NPO and RMU keep their steps: they are the cheap rows, and fewer steps leave the held-out harm in place.
}
QUICK_EVAL_ARGS = ("--limit=25",)
COLUMNS = ("asr_before", "asr_after", "rr_before", "rr_after", "utility", "degenerate")
LABELS = ("ASR before", "ASR after (any of 3)", "RR before", "RR after", "utility", "degenerate")


def _header(lead: tuple[str, ...]) -> str:
    names = (*lead, *LABELS)
    return "| " + " | ".join(names) + " |\n" + "|---" * len(names) + "|"


HEADER = _header(("model",))


@dataclass(frozen=True)
class Reproduction:
    """What one ``mirage-ds reproduce`` runs: the variant (``full`` or ``lora`` recipes), the seed, the ranks
    per training run, overrides applied to every recipe (e.g. ``data.synthetic.what_rate=0.5``), the
    methods (rows of ``METHODS``) and ``quick``: ``QUICK``'s fewer steps and ``QUICK_EVAL_ARGS``."""

    out_dir: Path
    variant: str = "full"
    seed: int = 0
    ranks: int = 1
    overrides: tuple[str, ...] = ()
    experiment: str | None = None
    methods: tuple[tuple[str, str, tuple[str, ...]], ...] = METHODS
    eval_args: tuple[str, ...] = field(default=())
    quick: bool = False
    jobs: int = 1  # trainings / evaluations at once: each is its own process, and its numbers do not depend on this

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs}: at least 1 run at a time")

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"reproduce-{'quick-' if self.quick else ''}{self.variant}-seed{self.seed}"

    @property
    def sized_methods(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """``methods`` with ``LORA``'s overrides after each one's own for the LoRA variant, then ``QUICK``'s when
        quick (the later override wins)."""
        lora = LORA if self.variant == "lora" else {}
        quick = QUICK if self.quick else {}
        return tuple((name, stem, (*sized, *lora.get(name, ()), *quick.get(name, ()))) for name, stem, sized in self.methods)

    @property
    def evaluation_args(self) -> tuple[str, ...]:
        return (*QUICK_EVAL_ARGS, *self.eval_args) if self.quick else self.eval_args


def select_methods(names: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """The rows of ``METHODS`` named in ``names`` (comma-separated row names), in ``METHODS``' order."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = [name for name, _, _ in METHODS]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise ConfigError(f"--methods {names!r}: unknown {', '.join(unknown) or 'empty'} (known: {', '.join(known)})")
    return tuple(row for row in METHODS if row[0] in wanted)


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


def table_markdown(rows: list[dict[str, Any]], lead: tuple[str, ...] = ("model",)) -> str:
    """The headed Markdown table (percent; 95% bootstrap intervals in brackets), first the ``lead`` keys."""
    lines = [_header(lead)] + ["| " + " | ".join([*(str(row[k]) for k in lead), *(_cell(row, c) for c in COLUMNS)]) + " |"
                               for row in rows]
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


def kshot_figure_of(results: list[tuple[str, dict[str, Any]]], title: str, path: Path) -> Path | None:
    """Figure 3's analogue from ``(model, eval.json)`` pairs: ``mirage-ds compare``'s K-shot figure drawn from
    the metrics each evaluation logs (``eval.report.metrics_of``). None when no result has a rate."""
    from mirage_ds.eval.comparison import kshot_figure
    from mirage_ds.eval.report import metrics_of

    return kshot_figure([(name, metrics_of(result)) for name, result in results], title, path)


def reproduce(plan: Reproduction, progress: Any = print) -> list[dict[str, Any]]:
    """Train every method from the base, evaluate base and methods, write the table and figures; returns its rows."""
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
    rows = [table_row(name, result) for name, result in results]
    figure1, figure3 = plan.out_dir / "figure1_first_words.png", plan.out_dir / "figure3_kshot.png"
    _first_word_figure(corpus / "sft", figure1)
    drawn = kshot_figure_of(results, f"{plan.experiment_name}: ASR / RR under the one-word attack, by shots K", figure3)
    meta = {"figure1": str(figure1), "figure3": str(drawn) if drawn else None, "variant": plan.variant, "seed": plan.seed,
            "quick": plan.quick, "experiment": plan.experiment_name, "overrides": list(plan.overrides),
            "method_overrides": {name: list(sized) for name, _, sized in plan.sized_methods},
            "eval_args": list(plan.evaluation_args), "base": str(base), "corpus": str(corpus)}
    write_table(rows, plan.out_dir, meta)
    return rows


@dataclass(frozen=True)
class Sweep:
    """The shortcut dial: one recipe key and the values it takes, one reproduction per value."""

    key: str
    values: tuple[str, ...]

    def directory(self, out_dir: Path, value: str) -> Path:
        return out_dir / f"sweep-{self.key}-{value}"


def parse_sweep(text: str) -> Sweep:
    """``KEY=V1,V2,...``; a bare corpus knob (``what_rate``, ``can_rate``, any ``data.synthetic`` field) stands
    for ``data.synthetic.<knob>``."""
    key, _, raw = text.partition("=")
    values = tuple(value.strip() for value in raw.split(",") if value.strip())
    if not key or not values:
        raise ConfigError(f"--sweep {text!r}: expected KEY=V1,V2,... (e.g. data.synthetic.what_rate=0.5,0.7,0.89)")
    if "." not in key:
        if key not in SyntheticSpec.model_fields:
            raise ConfigError(f"--sweep {text!r}: {key!r} is neither a dotted recipe key nor a corpus knob "
                              f"(data.synthetic: {', '.join(SyntheticSpec.model_fields)})")
        key = f"data.synthetic.{key}"
    return Sweep(key, values)


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def sweep_rows(sweep: Sweep, tables: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (value, model) from each value's table rows, in order: ``value`` (a number when it
    parses as one), ``method`` (the table's ``model``) and the table's columns and intervals."""
    return [{"value": _number(value), "method": row["model"], **{k: v for k, v in row.items() if k != "model"}}
            for value, rows in zip(sweep.values, tables) for row in rows]


def sweep_figure(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    """ASR and RR after the attack (percent, 95% interval shaded) against the swept value, one line per
    method. Values that are not all numbers are spaced evenly in the order swept."""
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    values = list(dict.fromkeys(row["value"] for row in rows))
    numeric = all(isinstance(value, float) for value in values)
    x = {value: (value if numeric else i) for i, value in enumerate(values)}
    methods = list(dict.fromkeys(row["method"] for row in rows))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, (column, label) in zip(axes, (("asr_after", "ASR after the attack (any of 3)"), ("rr_after", "RR after the attack"))):
        for i, method in enumerate(methods):
            points = [row for row in rows if row["method"] == method and row.get(column) is not None]
            if not points:
                continue
            xs, color = [x[row["value"]] for row in points], f"C{i % 10}"
            ax.plot(xs, [row[column] for row in points], "o-", color=color, label=method)
            bands = [row["ci95"].get(column) for row in points]
            if all(bands):
                ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=color, alpha=0.12, linewidth=0)
        if not numeric:
            ax.set_xticks(range(len(values)), [str(value) for value in values])
        ax.set_xlabel(key)
        ax.set_title(label, fontsize=10)
        ax.set_ylim(-3, 103)  # rates of exactly 0 or 100% stay visible
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"the shortcut dial: {key}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep(plan: Reproduction, dial: Sweep, progress: Any = print) -> list[dict[str, Any]]:
    """One reproduction per value of ``dial`` (``plan`` plus ``KEY=VALUE`` into ``OUT/sweep-KEY-VALUE``, finished
    methods kept), all in one MLflow experiment; writes ``OUT/sweep.json`` and ``OUT/sweep.png``, returns the rows.

    The base is not retrained per value: its cache key holds the base recipe's own corpus spec
    (``models.pretrained.base_key``), so a ``data.synthetic`` override changes the methods' training data
    and the eval set (the base is re-evaluated on it) but not the base."""
    for value in dial.values:  # a bad key or value fails here, before anything trains
        for _, stem, sized in plan.sized_methods:
            load_config(f"{stem}_{plan.variant}", [*sized, *plan.overrides, f"{dial.key}={value}"])
    experiment = plan.experiment or f"{plan.experiment_name}-sweep-{dial.key}"
    tables = []
    for value in dial.values:
        progress(f"sweep {dial.key}={value}")
        tables.append(reproduce(replace(plan, out_dir=dial.directory(plan.out_dir, value), experiment=experiment,
                                        overrides=(*plan.overrides, f"{dial.key}={value}")), progress))
    rows = sweep_rows(dial, tables)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    figure = sweep_figure(rows, dial.key, plan.out_dir / "sweep.png")
    meta = {"key": dial.key, "values": [_number(value) for value in dial.values], "figure": str(figure),
            "experiment": experiment, "directories": [str(dial.directory(plan.out_dir, value)) for value in dial.values]}
    (plan.out_dir / "sweep.json").write_text(json.dumps({"rows": rows, **meta}, indent=1) + "\n")
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
