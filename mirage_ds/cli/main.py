"""``mirage-ds``: data and pretrained-base building, recipe inspection, evaluation, run comparison and sweep files.

Training: ``mirage-ds train --recipe NAME [--ranks N] [key=value ...]`` runs ``deepspeed --num_gpus N
launcher/run.py --recipe NAME ...`` on the launcher this install carries (a checkout's ``launcher/``, a wheel's
``mirage_ds/launcher``), in the current directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from mirage_ds.cli.errors import report_user_error, user_error_types
from mirage_ds.cli.options import add_override_arguments


def _recipes(args: argparse.Namespace) -> int:
    from mirage_ds.config import list_recipes, load_config
    from mirage_ds.paper_scale import paper_scale, paper_scale_recipes

    names = args.names or (paper_scale_recipes() if args.paper_scale else list_recipes())
    for name in names:
        overrides = args.overrides
        if args.paper_scale:
            scale = paper_scale(name)
            overrides = scale.layered(overrides)
            print(f"{name} at paper scale: sets {' '.join(scale.overrides)}\n  {scale.command()}")
        cfg = load_config(name, overrides)
        if args.show:
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        else:
            print(f"{name}: ok ({cfg.description})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mirage_ds.config import ConfigError
    from mirage_ds.resources import launcher_command

    if args.ranks < 1:
        raise ConfigError(f"--ranks {args.ranks}: at least 1")
    command = [*launcher_command(args.ranks), "--recipe", args.recipe, *(["--paper-scale"] if args.paper_scale else []),
               *args.overrides]
    # Replaced, not wrapped: the launcher's exit code (0, 2, 3, 4) and signals (SIGTERM, SIGUSR1) are the caller's.
    os.execv(command[0], command)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirage-ds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these; `mirage-ds COMMAND --help` for its options")

    recipes = sub.add_parser("recipes", help="validate recipes (all by default) and optionally print them resolved")
    add_override_arguments(recipes, "applied to every named recipe, e.g. optim.lr=1e-3",
                           names="recipe names in recipes/ or YAML paths (default: every recipe)")
    recipes.add_argument("--show", action="store_true", help="print the resolved config")
    recipes.add_argument("--paper-scale", action="store_true",
                         help="print the recipe's paper-scale overrides and launch command (and apply them with --show)")
    recipes.set_defaults(func=_recipes)

    train = sub.add_parser(
        "train", help="train a recipe on N local ranks: the launcher under DeepSpeed",
        description="Runs `deepspeed --num_gpus N launcher/run.py --recipe NAME [--paper-scale] [KEY=VALUE ...]` on "
                    "the launcher this install carries (one rank: the launcher as plain Python), in the current "
                    "directory, on a free master port; exits with the launcher's code (0 finished, 2 bad config or "
                    "data, 3 preempted after a checkpoint, 4 non-finite loss).")
    train.add_argument("--recipe", required=True, help="recipe name (`mirage-ds recipes` lists them) or a path to a YAML file")
    train.add_argument("--ranks", type=int, default=2, help="local ranks (default 2; 1: one process, no DeepSpeed launcher)")
    train.add_argument("--paper-scale", action="store_true", help="apply the recipe's paper-scale overrides first")
    add_override_arguments(train, "dotted config key=value, e.g. output_dir=runs/npo optim.lr=1e-3")
    train.set_defaults(func=_train)

    from mirage_ds.cli.base import add_base_command
    from mirage_ds.cli.compare import add_compare_command
    from mirage_ds.cli.data import add_data_commands
    from mirage_ds.cli.evaluate import add_eval_commands
    from mirage_ds.cli.export import add_export_command
    from mirage_ds.cli.reproduce import add_reproduce_command
    from mirage_ds.cli.sweep import add_sweep_command
    from mirage_ds.cli.utility import add_utility_command

    add_base_command(sub)
    add_data_commands(sub)
    add_eval_commands(sub)
    add_export_command(sub)
    add_compare_command(sub)
    add_reproduce_command(sub)
    add_sweep_command(sub)
    add_utility_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except user_error_types() as err:
        report_user_error(err, 0)
        return 2


if __name__ == "__main__":
    sys.exit(main())
