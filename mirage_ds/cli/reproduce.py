"""``mirage-ds reproduce``: Table 1 in miniature on the embedded world (``mirage_ds/reproduce.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _reproduce(args: argparse.Namespace) -> int:
    from mirage_ds.reproduce import Reproduction, beside_base, reproduce, table_markdown

    extra = tuple(args.eval_arg)
    if args.beside:
        print(table_markdown(beside_base(Path(args.beside), extra)), end="")
        return 0
    plan = Reproduction(out_dir=Path(args.out), variant=args.variant, seed=args.seed, ranks=args.ranks,
                        overrides=tuple(args.overrides), experiment=args.experiment, eval_args=extra)
    rows = reproduce(plan, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(table_markdown(rows), end="")
    print(f"wrote {plan.out_dir / 'table.md'}, {plan.out_dir / 'table.json'}")
    return 0


def add_reproduce_command(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser(
        "reproduce", help="Table 1 in miniature: base, Unsafe-Filter, Mixed-SFT, Posthoc-SFT, NPO, RMU, evaluated",
        description="Trains every Table 1 method from the pretrained embedded base with the launcher, evaluates "
                    "each (ASR/RR before and after the one-word attack, utility, degenerate share) and writes "
                    "OUT/table.md and OUT/table.json. Finished methods (OUT/<method>/eval/eval.json) are kept. "
                    "With --beside RUN: print RUN's evaluated row beside its starting model's instead.")
    rp.add_argument("--out", default="runs/reproduce", help="output directory (default: runs/reproduce)")
    rp.add_argument("--variant", choices=("full", "lora"), default="full", help="the full or the LoRA recipes")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--ranks", type=int, default=1, help="ranks per training run (1: plain Python, no launcher)")
    rp.add_argument("--experiment", help="MLflow experiment (default: reproduce-<variant>-seed<seed>)")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override applied to every recipe, e.g. data.synthetic.what_rate=0.5")
    rp.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every mirage-ds eval, e.g. --eval-arg=--limit=20")
    rp.add_argument("--beside", metavar="RUN", help="print RUN's row beside its starting model's (no training)")
    rp.set_defaults(func=_reproduce)
