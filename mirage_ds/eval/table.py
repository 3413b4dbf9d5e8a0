"""Table 1: one row per evaluated model, the one layout every table of the project prints.

``mirage-ds reproduce`` (``table.md`` / ``table.json``), its ``--beside RUN`` table, ``mirage-ds compare``
(``comparison.md`` / ``comparison.json``) and ``eval_table.md``'s Table 1 row are all a ``Table`` rendered
by ``Table.to_markdown`` and ``Table.to_json``. A row is built from the flat metrics one evaluation logs
(``eval/report.py``'s ``metrics_of``): an ``eval.json`` goes through ``metrics_of`` (``report.row_of``), an
MLflow run hands back the same names (``comparison.py``), so both sources give the same row.

Cells are percent: the rate to one decimal, its 95% bootstrap interval to whole percent in brackets, ``†``
after a rate computed over mostly degenerate outputs (``degenerate.py``), ``n/a`` when not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mirage_ds.eval.degenerate import LEGEND, MARK, METRIC_SUFFIX, MOSTLY

MISSING = "n/a"  # not measured for this model (e.g. no utility set, SPA-VL not evaluated)


@dataclass(frozen=True)
class Column:
    """A Table 1 column: its key in ``table.json``'s rows, its Markdown label and the metric it reads."""

    key: str
    label: str
    metric: str
    optional: bool = False  # shown only when some row measured it


COLUMNS: tuple[Column, ...] = (
    Column("asr_before", "ASR before", "eval/asr_before"),
    Column("asr_after", "ASR after (any of K)", "eval/asr_after"),
    Column("rr_before", "RR before", "eval/rr_before"),
    Column("rr_after", "RR after (any of K)", "eval/rr_after"),
    # SPA-VL's harm (ASR) and help (RR) test splits, when `mirage-ds eval --spavl` measured them.
    Column("spavl_harm_asr", "SPA-VL harm ASR", "eval/spavl_harm/asr_before", optional=True),
    Column("spavl_help_rr", "SPA-VL help RR", "eval/spavl_help/rr_before", optional=True),
    Column("utility", "utility", "eval/utility"),
    # The share of degenerate outputs over every output behind the four headline rates (no interval).
    Column("degenerate", "degenerate", "eval/headline_degenerate"),
)


@dataclass(frozen=True)
class Rate:
    """One cell: a rate in percent (2 decimals kept), its 95% interval in percent, and whether most outputs
    behind it are degenerate."""

    value: float
    interval: tuple[float, float] | None = None
    marked: bool = False

    @classmethod
    def of(cls, metrics: dict[str, float], name: str) -> Rate | None:
        """``name``'s rate from logged metrics (fractions): ``name``, ``name_low`` / ``name_high`` (its
        interval) and ``name_degenerate`` (the degenerate share behind it); None when not logged."""
        if name not in metrics:
            return None
        low, high = metrics.get(f"{name}_low"), metrics.get(f"{name}_high")
        interval = (_percent(low), _percent(high)) if low is not None and high is not None else None
        return cls(_percent(metrics[name]), interval, metrics.get(name + METRIC_SUFFIX, 0.0) > MOSTLY)

    def cell(self) -> str:
        interval = f" [{self.interval[0]:.0f}, {self.interval[1]:.0f}]" if self.interval else ""
        return f"{self.value:.1f}{MARK if self.marked else ''}{interval}"


def _percent(fraction: float) -> float:
    return round(100 * fraction, 2)


def cell(rate: Rate | None) -> str:
    """A rate's Markdown cell (``MISSING`` when not measured); ``eval_table.md``'s subset rows use it too."""
    return rate.cell() if rate is not None else MISSING


@dataclass(frozen=True)
class Row:
    """One model's row: ``rates`` by column key (None: not measured). ``lead`` holds columns printed before
    the model, e.g. a sweep's ``(("value", 0.5),)``."""

    model: str
    rates: dict[str, Rate | None]
    lead: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def of_metrics(cls, model: str, metrics: dict[str, float]) -> Row:
        """The row from one evaluation's logged metrics (``metrics_of``'s names, as MLflow holds them)."""
        return cls(model, {column.key: Rate.of(metrics, column.metric) for column in COLUMNS})

    def value(self, key: str) -> float | None:
        rate = self.rates.get(key)
        return rate.value if rate is not None else None

    def interval(self, key: str) -> tuple[float, float] | None:
        rate = self.rates.get(key)
        return rate.interval if rate is not None else None


@dataclass(frozen=True)
class Table:
    """Table 1's rows, in order; the optional columns appear when some row measured them."""

    rows: tuple[Row, ...]

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(c for c in COLUMNS if not c.optional or any(row.rates.get(c.key) for row in self.rows))

    @property
    def marked(self) -> bool:
        return any(rate is not None and rate.marked for row in self.rows for rate in row.rates.values())

    def to_markdown(self, legend: bool = True) -> str:
        """The headed Markdown table; with ``legend``, the ``†`` legend under it when a rate is marked."""
        lead = [name for name, _ in self.rows[0].lead] if self.rows else []
        labels = [*lead, "model", *(c.label for c in self.columns)]
        lines = ["| " + " | ".join(labels) + " |", "|---" * len(labels) + "|"]
        for row in self.rows:
            cells = [*(str(value) for _, value in row.lead), row.model, *(cell(row.rates.get(c.key)) for c in self.columns)]
            lines.append("| " + " | ".join(cells) + " |")
        if legend and self.marked:
            lines += ["", LEGEND]
        return "\n".join(lines) + "\n"

    def to_json(self, **meta: Any) -> dict[str, Any]:
        """``{"rows": [...], **meta}``: each row its lead, ``model``, each column's percent (None: not
        measured), ``ci95`` (column: [low, high] or None) and ``marked`` (the columns carrying ``†``)."""
        rows = []
        for row in self.rows:
            rates = {c.key: row.rates.get(c.key) for c in self.columns}
            rows.append({**dict(row.lead), "model": row.model, **{k: r.value if r else None for k, r in rates.items()},
                         "ci95": {k: list(r.interval) if r and r.interval else None for k, r in rates.items()},
                         "marked": [k for k, r in rates.items() if r and r.marked]})
        return {"rows": rows, **meta}
