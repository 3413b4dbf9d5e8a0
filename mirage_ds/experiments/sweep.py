"""The shortcut dial: one recipe key and the values it takes, one reproduction per value (e.g. the planted
``data.synthetic.what_rate``), gathered into one table (``sweep.json``, each row led by its value) and
``sweep.png`` (ASR and RR after the attack against the value)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mirage_ds.atomic import write_json
from mirage_ds.config import ConfigError, load_config
from mirage_ds.eval.table import Table
from mirage_ds.experiments.figures import sweep_figure
from mirage_ds.experiments.plan import Reproduction
from mirage_ds.experiments.runner import reproduce
from mirage_ds.specs.synthetic import SyntheticSpec


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


def sweep_rows(sweep: Sweep, tables: list[Table]) -> Table:
    """Each value's table rows in order, each led by its ``value`` (a number when it parses as one)."""
    return Table(tuple(replace(row, lead=(("value", _number(value)),))
                       for value, table in zip(sweep.values, tables) for row in table.rows))


def sweep(plan: Reproduction, dial: Sweep, progress: Any = print, force: bool = False) -> Table:
    """One reproduction per value of ``dial`` (``plan`` plus ``KEY=VALUE`` into ``OUT/sweep-KEY-VALUE``, finished
    runs of the same plan kept, ``force`` as in ``reproduce``), all in one MLflow experiment; writes
    ``OUT/sweep.json`` and ``OUT/sweep.png``, returns the table.

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
                                        overrides=(*plan.overrides, f"{dial.key}={value}")), progress, force))
    table = sweep_rows(dial, tables)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    figure = sweep_figure(table, dial.key, plan.out_dir / "sweep.png")
    meta = {"key": dial.key, "values": [_number(value) for value in dial.values], "figure": str(figure),
            "experiment": experiment, "directories": [str(dial.directory(plan.out_dir, value)) for value in dial.values]}
    write_json(plan.out_dir / "sweep.json", table.to_json(**meta), indent=1)
    return table
