"""Evaluation outputs: ``eval.json``, a Table-1-shaped Markdown table, a plot, a sample of generations;
attached to the training run in MLflow (through the tracking queue) when the run was tracked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402

from mirage_ds.eval.degenerate import KINDS, LEGEND, MARK, METRIC_SUFFIX, MOSTLY  # noqa: E402
from mirage_ds.eval.suite import EvalResult  # noqa: E402

TABLE_HEADER = (
    "| model | ASR before | ASR after (any of K) | RR before | RR after (any of K) | utility (VQA acc) |\n"
    "|---|---|---|---|---|---|"
)
SUBSET_HEADER = (
    "| subset | rate | before | after, per shot | after, any of K | queries before / after x K | degenerate before "
    "| degenerate after |\n|---|---|---|---|---|---|---|---|"
)


def _marked(degenerate: dict[str, Any] | None) -> str:
    return MARK if degenerate is not None and degenerate["share"] > MOSTLY else ""


def _pct(estimate: dict[str, Any] | None, degenerate: dict[str, Any] | None = None) -> str:
    """A rate in percent with its interval; marked when most outputs behind it are degenerate."""
    if estimate is None:
        return "n/a"
    return (f"{100 * estimate['value']:.2f}{_marked(degenerate)} "
            f"[{100 * estimate['low']:.1f}, {100 * estimate['high']:.1f}]")


def _share(degenerate: dict[str, Any] | None) -> str:
    if degenerate is None:
        return "n/a"
    kinds = ", ".join(f"{k.replace('_', '-')} {100 * degenerate[k]:.1f}" for k in KINDS if degenerate[k])
    return f"{100 * degenerate['share']:.1f}" + (f" ({kinds})" if kinds else "")


def _headline(result: dict[str, Any], metric: str) -> tuple[str, str]:
    """Table 1's (before, after) cells for ``metric``, from its headline subset."""
    head = result[metric]
    if head is None:
        return "n/a", "n/a"
    degenerate = result["subsets"][head["subset"]]["degenerate"]
    return _pct(head["before"], degenerate["before"]), _pct(head["any_of_k"], degenerate["after"])


def table_row(result: dict[str, Any]) -> str:
    (asr_before, asr_after), (rr_before, rr_after) = _headline(result, "asr"), _headline(result, "rr")
    return f"| {result['model']} | {asr_before} | {asr_after} | {rr_before} | {rr_after} | {_pct(result['utility'])} |"


def subset_rows(result: dict[str, Any]) -> list[str]:
    """One Markdown row per subset: its rate before and after, counts, and the degenerate shares."""
    rows = []
    for name, row in result["subsets"].items():
        degenerate = row["degenerate"]
        per_shot = " / ".join(f"{100 * e['value']:.2f}{_marked(degenerate['after'])}" for e in row["per_shot"]) or "n/a"
        counts = row["counts"]
        sizes = f"{counts['before']} / {counts['after']} x {row['shots']}" if row["shots"] else f"{counts['before']} / -"
        rows.append(f"| {name} | {row['metric'].upper()} | {_pct(row['before'], degenerate['before'])} | {per_shot} | "
                    f"{_pct(row['any_of_k'], degenerate['after'])} | {sizes} | {_share(degenerate['before'])} | "
                    f"{_share(degenerate['after'])} |")
    return rows


def table_markdown(result: dict[str, Any]) -> str:
    """Table 1's row, the per-subset table (never pooled) and, when a rate is marked, the legend."""
    lines = [TABLE_HEADER, table_row(result), "", SUBSET_HEADER, *subset_rows(result)]
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
    the first k shots as ``..._after_k<k>``."""
    out: dict[str, float] = {}
    for metric in ("asr", "rr"):
        if result[metric] is not None:
            _rates(out, f"eval/{metric}", result[metric], result["subsets"][result[metric]["subset"]]["degenerate"])
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
    paths["json"].write_text(json.dumps(data, indent=2))
    paths["table"].write_text(table_markdown(data))
    plot(data, paths["plot"])
    paths["generations"].write_text("".join(json.dumps(g) + "\n" for g in result.generations[:sample]))
    if run_dir is not None:
        # Imported here: MLflow takes seconds to import, and an eval of a bare export never talks to it.
        from mirage_ds.tracking.mlflow_run import log_results

        log_results(run_dir, metrics_of(data), list(paths.values()), "eval", params_of(data))
    return paths
