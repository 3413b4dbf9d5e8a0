"""The Table 1 comparison: evaluated runs read back from the tracking store (``mirage-ds compare``), and a
Figure 3 style plot of ASR / RR against the attack's shots K per run.

An MLflow run holds the metrics ``mirage-ds eval`` logged (``eval/report.py``'s ``metrics_of``), so its row
is ``Row.of_metrics`` of them under the run's name: the row ``reproduce`` builds from the same eval.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mirage_ds.eval.degenerate import METRIC_SUFFIX, MOSTLY
from mirage_ds.eval.table import Row, Table
from mirage_ds.tracking.store import open_client, sqlite_path, store_uri

KSHOT_FIGURE = "comparison_kshot.png"
# A run counts as evaluated once `mirage-ds eval` attached its metrics (eval/report.py: metrics_of).
EVALUATED = "metrics.`eval/asr_before` >= 0"


class NothingToCompare(LookupError):
    """No store, experiment or evaluated run where compare looked; the message says where that was."""


@dataclass(frozen=True)
class KPoint:
    """One point of the K-shot figure: K = 0 the original queries, K = k any of the first k attacked shots."""

    k: int
    value: float
    low: float | None
    high: float | None
    degenerate: bool  # most outputs behind it are degenerate (drawn hollow, as the table marks it)


def kshot_points(metrics: dict[str, float], rate: str) -> list[KPoint]:
    """``rate``'s ("asr" or "rr") points from a run's metrics: ``eval/<rate>_before``, ``eval/<rate>_after_k<k>``."""
    names = [f"eval/{rate}_before"]
    while f"eval/{rate}_after_k{len(names)}" in metrics:
        names.append(f"eval/{rate}_after_k{len(names)}")
    share = {0: metrics.get(f"eval/{rate}_before{METRIC_SUFFIX}", 0.0), 1: metrics.get(f"eval/{rate}_after{METRIC_SUFFIX}", 0.0)}
    return [KPoint(k, metrics[name], metrics.get(f"{name}_low"), metrics.get(f"{name}_high"), share[min(k, 1)] > MOSTLY)
            for k, name in enumerate(names) if name in metrics]


def kshot_figure(runs: list[tuple[str, dict[str, float]]], title: str, path: Path) -> Path | None:
    """Figure 3 style: ASR and RR (percent) against the shots K of the one-word attack, one line per run, its
    bootstrap interval shaded, a rate over mostly degenerate outputs hollow. None when no run has a rate."""
    curves = {rate: [(name, kshot_points(metrics, rate)) for name, metrics in runs] for rate in ("asr", "rr")}
    if not any(points for lines in curves.values() for _, points in lines):
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, (rate, label) in zip(axes, (("asr", "ASR on unsafe queries"), ("rr", "RR on safe queries"))):
        for i, (name, points) in enumerate(curves[rate]):
            if not points:
                continue
            color, ks = f"C{i % 10}", [p.k for p in points]
            ax.plot(ks, [100 * p.value for p in points], color=color, label=name)
            for p in points:
                ax.plot(p.k, 100 * p.value, "o", color=color, markerfacecolor="white" if p.degenerate else color)
            if all(p.low is not None and p.high is not None for p in points):
                ax.fill_between(ks, [100 * p.low for p in points], [100 * p.high for p in points],
                                color=color, alpha=0.15, linewidth=0)
        most = max((p.k for _, points in curves[rate] for p in points), default=0)
        ax.set_xticks(range(most + 1), ["orig."] + [str(k) for k in range(1, most + 1)])
        ax.set_xlabel("attack shots K (any of the first K)")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(-3, 103)  # rates of exactly 0 or 100% stay visible
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%  (hollow: mostly degenerate outputs)")
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    labelled[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(out_dir: Path, experiment: str | None = None, uri: str | None = None) -> str:
    """Writes ``comparison.md``, ``comparison.json`` (Table 1, ``eval/table.py``) and the K-shot figure into ``out_dir``; returns the Markdown.

    ``experiment`` None: the experiment of the most recently started evaluated run, so that right after
    ``make demo`` (or ``make run``, or a sweep) this is the table of what just ran; the Markdown then says
    so under its title and lists every experiment in the store.
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
    title = names[wanted[0]]
    table = Table(tuple(Row.of_metrics(run.info.run_name, run.data.metrics) for run in runs))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(table.to_json(experiment=title, tracking_uri=uri), indent=1) + "\n")
    lines = [f"Experiment {title!r} at {uri}:", "", table.to_markdown().rstrip("\n")]
    if experiment is None:
        lines[1:1] = [f"(no --experiment: the experiment of the most recently started evaluated run, of: {listed})"]
    figure = kshot_figure([(run.info.run_name, run.data.metrics) for run in runs],
                          f"{title}: ASR / RR under the one-word attack, by shots K", out_dir / KSHOT_FIGURE)
    if figure is not None:
        lines += ["", f"![ASR / RR against the attack's shots K]({figure.name})"]
    markdown = "\n".join(lines) + "\n"
    (out_dir / "comparison.md").write_text(markdown)
    return markdown
