"""The Table 1 comparison: evaluated runs read back from the tracking store (``mirage-ds compare``)."""

from __future__ import annotations

import csv
from pathlib import Path

from mirage_ds.eval.degenerate import LEGEND, MARK, METRIC_SUFFIX, MOSTLY
from mirage_ds.tracking.store import open_client, sqlite_path, store_uri

COLUMNS = [
    ("ASR before", "eval/asr_before"),
    ("ASR after", "eval/asr_after"),
    ("RR before", "eval/rr_before"),
    ("RR after", "eval/rr_after"),
    ("utility", "eval/utility"),
    ("shortcut flips", "eval/shortcut_flip_rate"),
]
# A run counts as evaluated once `mirage-ds eval` attached its metrics (eval/report.py: metrics_of).
EVALUATED = "metrics.`eval/asr_before` >= 0"


class NothingToCompare(LookupError):
    """No store, experiment or evaluated run where compare looked; the message says where that was."""


def compare(out_dir: Path, experiment: str | None = None, uri: str | None = None) -> str:
    """Writes ``comparison.csv`` and ``comparison.md`` into ``out_dir``; returns the Markdown table.

    ``experiment`` None: the experiment of the most recently started evaluated run, so that right after
    ``make demo`` (or ``make run``, or a sweep) this is the table of what just ran.
    """
    uri = uri or store_uri()
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise NothingToCompare(f"no MLflow store at {path} (MLFLOW_TRACKING_URI unset: the default is runs/mlflow.db "
                               f"under the working directory); run from where you trained, or pass --tracking-uri")
    client = open_client(uri)
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    listed = ", ".join(sorted(names.values())) or "none"
    if experiment is not None:
        wanted = [i for i, name in names.items() if name == experiment]
        if not wanted:
            raise NothingToCompare(f"no MLflow experiment {experiment!r} at {uri} (found: {listed})")
    else:
        latest = client.search_runs(list(names), filter_string=EVALUATED, order_by=["attributes.start_time DESC"], max_results=1)
        wanted = [latest[0].info.experiment_id] if latest else []
    runs = client.search_runs(wanted, filter_string=EVALUATED, order_by=["attributes.start_time ASC"]) if wanted else []
    if not runs:
        raise NothingToCompare(f"no evaluated runs at {uri} (experiments: {experiment or listed}); "
                               "evaluate one with `mirage-ds eval --run DIR`")
    header = ["run", "recipe"] + [name for name, _ in COLUMNS]
    rows = []
    for run in runs:
        metrics = run.data.metrics
        # A rate computed mostly over degenerate outputs (eval/degenerate.py) carries the mark.
        rows.append([run.info.run_name, run.data.params.get("recipe", "")]
                    + [f"{100 * metrics[key]:.2f}" + (MARK if metrics.get(key + METRIC_SUFFIX, 0.0) > MOSTLY else "")
                       if key in metrics else "" for _, key in COLUMNS])
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "comparison.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    lines = [f"Experiment {names[wanted[0]]!r} at {uri}:", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    if any(MARK in cell for row in rows for cell in row):
        lines += ["", LEGEND]
    markdown = "\n".join(lines) + "\n"
    (out_dir / "comparison.md").write_text(markdown)
    return markdown
