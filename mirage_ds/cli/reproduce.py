"""``mirage-ds reproduce``: Table 1 in miniature on the embedded world (``mirage_ds/experiments/``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mirage_ds.cli.options import add_override_arguments


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _reproduce(args: argparse.Namespace) -> int:
    from mirage_ds.experiments.plan import METHODS, Reproduction, default_out, select_methods
    from mirage_ds.experiments.runner import beside_base, reproduce
    from mirage_ds.experiments.sweep import parse_sweep, sweep

    extra = tuple(args.eval_arg)
    if args.beside:
        print(beside_base(Path(args.beside), extra).to_markdown(), end="")
        return 0
    plan = Reproduction(out_dir=Path(args.out) if args.out else default_out(args.variant, args.seed, args.quick),
                        variant=args.variant, seed=args.seed, ranks=args.ranks, overrides=tuple(args.overrides),
                        experiment=args.experiment, methods=select_methods(args.methods) if args.methods else METHODS,
                        eval_args=extra, quick=args.quick, jobs=args.jobs)
    out = plan.out_dir  # absolute: the caller's directory is where a relative --out lives, in every process
    if args.sweep:
        print(sweep(plan, parse_sweep(args.sweep), _progress, args.force).to_markdown(), end="")
        print(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}")
        return 0
    print(reproduce(plan, _progress, args.force).to_markdown(), end="")
    print(f"wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'figure1_first_words.png'}, {out / 'figure3_kshot.png'}")
    return 0


def add_reproduce_command(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser(
        "reproduce", help="Table 1 in miniature: base, Unsafe-Filter, Mixed-SFT, Posthoc-SFT, NPO, RMU, evaluated",
        description="Trains every Table 1 method from the pretrained embedded base with the launcher, evaluates "
                    "each (ASR/RR before and after the one-word attack, utility, degenerate share) and writes "
                    "OUT/table.md, OUT/table.json, OUT/figure1_first_words.png (first words of the SFT data) and "
                    "OUT/figure3_kshot.png (ASR/RR against the attack's shots K, one line per model). Each run "
                    "directory (OUT/base, OUT/<method>) records the plan it ran for (plan.json: recipe, sizes, seed, "
                    "overrides, ranks, base, eval arguments); a finished run of the same plan is kept, one of "
                    "another plan is an error naming both (--force reruns it). With --sweep KEY=V1,V2,...: one such "
                    "directory per value, OUT/sweep-KEY-VALUE, then OUT/sweep.json and OUT/sweep.png. "
                    "With --beside RUN: print RUN's evaluated row beside its starting model's instead.")
    rp.add_argument("--out", help="output directory, relative to the current one (default: runs/reproduce, with --quick "
                                  "runs/reproduce-quick; another --variant or --seed: VARIANT-seedSEED below it)")
    rp.add_argument("--force", action="store_true",
                    help="rerun the run directories under OUT that hold runs of another plan (default: refuse them)")
    rp.add_argument("--variant", choices=("full", "lora"), default="full", help="the full or the LoRA recipes")
    rp.add_argument("--seed", type=int, default=0, help="every recipe's seed (default 0)")
    rp.add_argument("--ranks", type=int, default=1, help="ranks per training run (1: plain Python, no launcher)")
    rp.add_argument("--jobs", type=int, default=1,
                    help="trainings and evaluations run at once, each its own process (2 on a 2-core machine with "
                         "--ranks 1); each run's numbers are the same as with 1")
    rp.add_argument("--experiment", help="MLflow experiment (default: reproduce-[quick-]<variant>-seed<seed>, "
                                         "with --sweep KEY: that name and -sweep-KEY)")
    add_override_arguments(rp, "applied to every recipe, e.g. data.synthetic.what_rate=0.5")
    rp.add_argument("--methods", metavar="NAME,...",
                    help="only these rows, e.g. Mixed-SFT,NPO (default: all; the base is always evaluated)")
    rp.add_argument("--quick", action="store_true",
                    help="fewer steps per method and evaluation on fewer items (experiments/plan.py: QUICK, QUICK_EVAL_ARGS): "
                         "a few minutes once the base is cached; wider intervals")
    rp.add_argument("--sweep", metavar="KEY=V1,V2,...",
                    help="the shortcut dial: rerun the methods once per value of KEY (a recipe key, or a corpus knob "
                         "such as what_rate or can_rate for data.synthetic.<knob>) and plot ASR and RR after the "
                         "attack against it. The base is not retrained: its cache key holds the base recipe's own "
                         "corpus spec, so a data.synthetic value changes the methods' data and the eval set (the "
                         "base is re-evaluated on it), not the base")
    rp.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every mirage-ds eval, e.g. --eval-arg=--limit=20")
    rp.add_argument("--beside", metavar="RUN", help="print RUN's row beside its starting model's (no training)")
    rp.set_defaults(func=_reproduce)
