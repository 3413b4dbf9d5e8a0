"""A reproduction's figures: Figure 1 (first words of the SFT data), Figure 3 (ASR / RR against the attack's
shots K, ``mirage-ds compare``'s figure) and the shortcut dial's plot (ASR / RR after the attack against
the swept value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mirage_ds.eval.table import Row, Table


def first_word_figure(sft_dir: Path, path: Path) -> None:
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


def _swept(row: Row) -> Any:
    return dict(row.lead)["value"]


def sweep_figure(table: Table, key: str, path: Path) -> Path:
    """ASR and RR after the attack (percent, 95% interval shaded) against the swept value (each row's lead
    ``value``), one line per model. Values that are not all numbers are spaced evenly in the order swept."""
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    values = list(dict.fromkeys(_swept(row) for row in table.rows))
    numeric = all(isinstance(value, float) for value in values)
    x = {value: (value if numeric else i) for i, value in enumerate(values)}
    models = list(dict.fromkeys(row.model for row in table.rows))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, (column, label) in zip(axes, (("asr_after", "ASR after the attack (any of 3)"), ("rr_after", "RR after the attack"))):
        for i, model in enumerate(models):
            points = [row for row in table.rows if row.model == model and row.value(column) is not None]
            if not points:
                continue
            xs, color = [x[_swept(row)] for row in points], f"C{i % 10}"
            ax.plot(xs, [row.value(column) for row in points], "o-", color=color, label=model)
            bands = [row.interval(column) for row in points]
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
