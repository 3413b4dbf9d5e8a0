"""Evaluation outputs: ``eval.json``, ``eval_table.md`` (its Table 1 row as ``eval/table.py`` prints every
table, then one row per subset), a plot, a sample of generations; attached to the training run in MLflow
(through the tracking queue) when the run was tracked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402

from mirage_ds.atomic import write_json  # noqa: E402
from mirage_ds.eval.degenerate import KINDS, LEGEND, MARK, METRIC_SUFFIX  # noqa: E402
from mirage_ds.eval.suite import EvalResult  # noqa: E402
from mirage_ds.eval.table import MISSING, Rate, Row, Table, cell  # noqa: E402

SUBSET_HEADER = (
    "| subset | rate | before | after, per shot | after, any of K | queries before / after x K | degenerate before "
    "| degenerate after |\n|---|---|---|---|---|---|---|---|"
)


def _share(degenerate: dict[str, Any] | None) -> str:
    if degenerate is None:
        return MISSING
    kinds = ", ".join(f"{k.replace('_', '-')} {100 * degenerate[k]:.1f}" for k in KINDS if degenerate[k])
    return f"{100 * degenerate['share']:.1f}" + (f" ({kinds})" if kinds else "")


def row_of(result: dict[str, Any], model: str | None = None) -> Row:
    """An ``eval.json``'s Table 1 row (named ``model``, else the evaluation's own name), read through the
    metrics it logs: the same row ``mirage-ds compare`` reads back from its MLflow run."""
    return Row.of_metrics(model or result["model"], metrics_of(result))


def subset_rows(result: dict[str, Any]) -> list[str]:
    """One Markdown row per subset: its rate before and after (Table 1's cells), counts, the degenerate shares."""
    metrics, rows = metrics_of(result), []
    for name, row in result["subsets"].items():
        prefix, degenerate = f"eval/{name}/{row['metric']}", row["degenerate"]
        after = Rate.of(metrics, f"{prefix}_after")
        # Each shot's outputs are among the attacked ones: a shot carries the after-attack mark.
        shots = [replace(shot, marked=bool(after and after.marked))
                 for shot in (Rate.of(metrics, f"{prefix}_shot{k + 1}") for k in range(len(row["per_shot"]))) if shot]
        counts = row["counts"]
        sizes = f"{counts['before']} / {counts['after']} x {row['shots']}" if row["shots"] else f"{counts['before']} / -"
        rows.append(f"| {name} | {row['metric'].upper()} | {cell(Rate.of(metrics, f'{prefix}_before'))} | "
                    f"{' / '.join(cell(shot) for shot in shots) or MISSING} | {cell(after)} | {sizes} | "
                    f"{_share(degenerate['before'])} | {_share(degenerate['after'])} |")
    return rows


def table_markdown(result: dict[str, Any]) -> str:
    """``eval_table.md``: Table 1's row, the per-subset table (never pooled) and, when a rate is marked, the legend."""
    lines = [Table((row_of(result),)).to_markdown(legend=False), SUBSET_HEADER, *subset_rows(result)]
    if MARK in "\n".join(lines):
        lines += ["", LEGEND]
    return "\n".join(lines) + "\n"


def _estimate(out: dict[str, float], name: str, estimate: dict[str, Any]) -> None:
    """A rate and its interval: ``name``, ``name_low``, ``name_high`` (compare prints the interval)."""
    out[name], out[f"{name}_low"], out[f"{name}_high"] = estimate["value"], estimate["low"], estimate["high"]


def _rates(out: dict[str, float], prefix: str, report: dict[str, Any], degenerate: dict[str, Any]) -> None:
    if report["before"] is not None:
        _estimate(out, f"{prefix}_before", report["before"])
        out[f"{prefix}_before{METRIC_SUFFIX}"] = degenerate["before"]["share"]
    if report["any_of_k"] is not None:
        _estimate(out, f"{prefix}_after", report["any_of_k"])
        out[f"{prefix}_after{METRIC_SUFFIX}"] = degenerate["after"]["share"]
    for k, shot in enumerate(report["per_shot"]):
        out[f"{prefix}_shot{k + 1}"] = shot["value"]
    for k, first in enumerate(report.get("any_of_first", [])):  # any of the first k shots: Figure 3's curve
        _estimate(out, f"{prefix}_after_k{k + 1}", first)


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """Flat metric names logged to MLflow and read back by ``mirage-ds compare``: the headline
    ``eval/asr_*`` / ``eval/rr_*``, each subset's ``eval/<subset>/<rate>_*``; beside every before/after
    rate its interval (``..._low``, ``..._high``) and degenerate share (``..._degenerate``); the rate over
    the first k shots as ``..._after_k<k>``; ``eval/headline_degenerate``, the degenerate share over every
    output behind the four headline rates (Table 1's last column)."""
    out: dict[str, float] = {}
    n = bad = 0.0
    for metric in ("asr", "rr"):
        if result[metric] is not None:
            degenerate = result["subsets"][result[metric]["subset"]]["degenerate"]
            _rates(out, f"eval/{metric}", result[metric], degenerate)
            for share in (share for share in degenerate.values() if share):
                n += share["n"]
                bad += share["share"] * share["n"]  # eval.json gives each kind as a fraction of n
    if n:
        out["eval/headline_degenerate"] = bad / n
    for name, row in result["subsets"].items():
        _rates(out, f"eval/{name}/{row['metric']}", row, row["degenerate"])
    if result["shortcut"]:
        out["eval/shortcut_flip_rate"] = result["shortcut"]["flip_rate"]
    if result["utility"] is not None:
        _estimate(out, "eval/utility", result["utility"])
    return out


def params_of(result: dict[str, Any]) -> dict[str, str]:
    """What produced the numbers, as MLflow params: protocol, template and decoding, the judges."""
    judge = result["judge"]
    return {
        "eval.protocol": result["protocol"],
        "eval.template": result["generation"]["template"],
        "eval.dtype": result["generation"]["dtype"],
        "eval.max_new_tokens": str(result["generation"]["max_new_tokens"]),
        "eval.keywords": judge["keywords"],
        "eval.judge_model": judge.get("model", "none"),
        "eval.judge_dtype": judge.get("dtype", "none"),
        "eval.judge_prompt": f"{judge.get('prompt_before', 'none')}/{judge.get('prompt_after', 'none')}",
        "eval.judge_decoding": json.dumps(judge.get("decoding"), sort_keys=True),
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    labels = ["ASR", "RR"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for offset, (when, key) in enumerate((("before attack", "before"), ("after attack (any of K)", "any_of_k"))):
        # A rate that was not measured (no such subset, no attack file) draws as an empty slot.
        cells = [(result[m] or {}).get(key) or {"value": 0.0, "low": 0.0, "high": 0.0} for m in ("asr", "rr")]
        values = [c["value"] * 100 for c in cells]
        lows = [v - c["low"] * 100 for v, c in zip(values, cells)]
        highs = [c["high"] * 100 - v for v, c in zip(values, cells)]
        xs = [i + (offset - 0.5) * 0.38 for i in range(len(labels))]
        ax.bar(xs, values, width=0.36, yerr=[lows, highs], capsize=3, label=when)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"{result['model']}: one-word attack")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: EvalResult, out_dir: Path, run_dir: Path | None, sample: int = 50) -> dict[str, Path]:
    """Write the eval outputs into ``out_dir`` (the first ``sample`` generations); when ``run_dir`` is a tracked
    training run, attach the metrics and files to its MLflow run. Returns the written paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    paths = {
        "json": out_dir / "eval.json",
        "table": out_dir / "eval_table.md",
        "plot": out_dir / "eval_attack.png",
        "generations": out_dir / "generations.jsonl",
    }
    paths["table"].write_text(table_markdown(data))
    plot(data, paths["plot"])
    paths["generations"].write_text("".join(json.dumps(g) + "\n" for g in result.generations[:sample]))
    # Last and atomic: an eval.json that exists is a finished evaluation (reproduce reuses it as one).
    write_json(paths["json"], data)
    if run_dir is not None:
        # Imported here: MLflow takes seconds to import, and an eval of a bare export never talks to it.
        from mirage_ds.tracking.mlflow_run import log_results

        log_results(run_dir, metrics_of(data), list(paths.values()), "eval", params_of(data))
    return paths
