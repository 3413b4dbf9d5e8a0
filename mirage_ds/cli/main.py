"""``mirage-ds``: data building, recipe inspection, evaluation, run comparison and sweep files.

Training itself is launched through DeepSpeed: ``deepspeed launcher/run.py --recipe NAME``.
"""

from __future__ import annotations

import argparse
import logging
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
            overrides = [*scale.overrides, *overrides]
            print(f"{name} at paper scale: sets {' '.join(scale.overrides)}\n  {scale.command()}")
        cfg = load_config(name, overrides)
        if args.show:
            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        else:
            print(f"{name}: ok ({cfg.description})")
    return 0


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

    from mirage_ds.cli.compare import add_compare_command
    from mirage_ds.cli.data import add_data_commands
    from mirage_ds.cli.evaluate import add_eval_commands
    from mirage_ds.cli.export import add_export_command
    from mirage_ds.cli.reproduce import add_reproduce_command
    from mirage_ds.cli.sweep import add_sweep_command
    from mirage_ds.cli.utility import add_utility_command

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
