"""``mirage-ds compare``: the Table 1 comparison of an experiment's evaluated runs, read back from MLflow."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mlflow import MlflowClient

from mirage_ds.config import ConfigError

COLUMNS = [
    ("ASR before", "eval/asr_before"),
    ("ASR after", "eval/asr_after"),
    ("RR before", "eval/rr_before"),
    ("RR after", "eval/rr_after"),
    ("utility", "eval/utility"),
    ("shortcut flips", "eval/shortcut_flip_rate"),
]


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs').resolve() / 'mlflow.db'}"


def compare(experiment: str, out_dir: Path, tracking_uri: str | None = None) -> str:
    """Writes ``comparison.csv`` and ``comparison.md`` into ``out_dir``; returns the Markdown table."""
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments())
        raise ConfigError(f"no MLflow experiment {experiment!r} at {client.tracking_uri} (found: {names or 'none'})")
    runs = client.search_runs([found.experiment_id], filter_string="metrics.`eval/asr_before` >= 0",
                              order_by=["attributes.start_time ASC"])
    header = ["run", "recipe"] + [name for name, _ in COLUMNS]
    rows = []
    for run in runs:
        metrics = run.data.metrics
        rows.append([run.info.run_name, run.data.params.get("recipe", "")]
                    + [f"{100 * metrics[key]:.2f}" if key in metrics else "" for _, key in COLUMNS])
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "comparison.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    markdown = "\n".join(lines) + "\n"
    (out_dir / "comparison.md").write_text(markdown)
    return markdown
