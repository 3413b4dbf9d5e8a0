"""Evaluation outputs: ``eval.json``, a Table-1-shaped Markdown table, a plot, a sample of generations;
attached to the training run in MLflow when the run was tracked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402

from mlflow.entities import Metric  # noqa: E402

from mirage_ds.eval.suite import EvalResult  # noqa: E402
from mirage_ds.mlflow_tracker import attached_run  # noqa: E402

TABLE_HEADER = (
    "| model | ASR before | ASR after (any of K) | RR before | RR after (any of K) | utility (VQA acc) |\n"
    "|---|---|---|---|---|---|"
)


def _pct(estimate: dict[str, Any] | None) -> str:
    if estimate is None:
        return "n/a"
    return f"{100 * estimate['value']:.2f} [{100 * estimate['low']:.1f}, {100 * estimate['high']:.1f}]"


def table_row(result: dict[str, Any]) -> str:
    asr, rr = result["asr"], result["rr"]
    return (f"| {result['model']} | {_pct(asr['before'])} | {_pct(asr['any_of_k'])} | {_pct(rr['before'])} | "
            f"{_pct(rr['any_of_k'])} | {_pct(result['utility'])} |")


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """Flat metric names logged to MLflow and read back by ``mirage-ds compare``."""
    out = {
        "eval/asr_before": result["asr"]["before"]["value"],
        "eval/asr_after": result["asr"]["any_of_k"]["value"],
        "eval/rr_before": result["rr"]["before"]["value"],
        "eval/rr_after": result["rr"]["any_of_k"]["value"],
        "eval/shortcut_flip_rate": result["shortcut"]["flip_rate"],
    }
    for k, shot in enumerate(result["asr"]["per_shot"]):
        out[f"eval/asr_shot{k + 1}"] = shot["value"]
    for k, shot in enumerate(result["rr"]["per_shot"]):
        out[f"eval/rr_shot{k + 1}"] = shot["value"]
    if result["utility"] is not None:
        out["eval/utility"] = result["utility"]["value"]
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    labels = ["ASR", "RR"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for offset, (when, key) in enumerate((("before attack", "before"), ("after attack (any of K)", "any_of_k"))):
        values = [result[m][key]["value"] * 100 for m in ("asr", "rr")]
        lows = [v - result[m][key]["low"] * 100 for v, m in zip(values, ("asr", "rr"))]
        highs = [result[m][key]["high"] * 100 - v for v, m in zip(values, ("asr", "rr"))]
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
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    paths = {
        "json": out_dir / "eval.json",
        "table": out_dir / "eval_table.md",
        "plot": out_dir / "eval_attack.png",
        "generations": out_dir / "generations.jsonl",
    }
    paths["json"].write_text(json.dumps(data, indent=2))
    paths["table"].write_text(f"{TABLE_HEADER}\n{table_row(data)}\n")
    plot(data, paths["plot"])
    paths["generations"].write_text("".join(json.dumps(g) + "\n" for g in result.generations[:sample]))
    if run_dir is not None:
        attached = attached_run(run_dir)
        if attached is not None:
            client, run_id = attached
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics_of(data).items()])
            for path in paths.values():
                client.log_artifact(run_id, str(path), "eval")
    return paths
