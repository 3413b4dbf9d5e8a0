"""``mirage-ds compare``: the Table 1 comparison of evaluated runs, read back from the tracking store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _compare(args: argparse.Namespace) -> int:
    from mirage_ds.eval.comparison import NothingToCompare, compare
    from mirage_ds.tracking.store import StoreError

    try:
        print(compare(Path(args.out), args.experiment, args.tracking_uri), end="")
    except (NothingToCompare, StoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def add_compare_command(sub: argparse._SubParsersAction) -> None:
    """``mirage-ds compare``; its --help says how the experiment is chosen when none is given."""
    cmp = sub.add_parser(
        "compare", help="Table 1 comparison of evaluated runs (default: the experiment evaluated last)",
        description="Table 1 (VLGuard ASR/RR before and after the one-word attack with 95% intervals, SPA-VL harm ASR "
                    "and help RR when measured, utility, the degenerate share; † on rates over mostly degenerate "
                    "outputs; the layout of `mirage-ds reproduce`'s table.md) of every evaluated run in one "
                    "MLflow experiment, and comparison_kshot.png (ASR/RR against the attack's shots K, per run). "
                    "With no --experiment, the experiment of the most recently started run "
                    "that `mirage-ds eval` evaluated: right after `make demo`, `make run` or a sweep, the table of "
                    "what just ran (the output says so under its title and lists the store's experiments). Store: --tracking-uri, else $MLFLOW_TRACKING_URI, else "
                    "sqlite:///runs/mlflow.db under the working directory (where make and slurm/ write it).")
    cmp.add_argument("--experiment", default=None, help="an MLflow experiment name (default: the one evaluated last)")
    cmp.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    cmp.add_argument("--out", default="runs/comparison", help="where comparison.md, comparison.json and comparison_kshot.png go")
    cmp.set_defaults(func=_compare)
