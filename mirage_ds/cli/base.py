"""``mirage-ds base build``: the pretrained embedded base, built alone (the launcher's build phase does the same
before a run that starts from it)."""

from __future__ import annotations

import argparse

from mirage_ds.cli.options import add_override_arguments

DEFAULT_RECIPE = "npo_lora"  # `make run`'s recipe; every recipe's embedded default starts from the same base


def _build(args: argparse.Namespace) -> int:
    from mirage_ds.config import ConfigError, load_config
    from mirage_ds.models.pretrained import base_path, starts_from_base

    cfg = load_config(args.recipe, args.overrides)
    if not starts_from_base(cfg.model):
        raise ConfigError(f"recipe {args.recipe} starts from model.path={cfg.model.path!r}, model.embedded_base="
                          f"{cfg.model.embedded_base}: not the pretrained embedded base, nothing to build")
    cached = (base_path(cfg.model.embedded) / "config.json").is_file()
    from mirage_ds.models.loading import ensure_model_path

    path = ensure_model_path(cfg.model)
    print(f"pretrained embedded base: {path} ({'cached' if cached else 'built'})")
    return 0


def add_base_command(sub: argparse._SubParsersAction) -> None:
    base = sub.add_parser("base", help="the pretrained embedded base: `mirage-ds base build` trains it once")
    actions = base.add_subparsers(dest="action", required=True, metavar="ACTION",
                                  help="build (`mirage-ds base build --help` for its options)")
    build = actions.add_parser(
        "build", help="train the pretrained embedded base if it is not cached, and print its path",
        description="Trains the pretrained embedded base (recipes/base_full.yaml, one rank, a few minutes on 2 cores) "
                    "that a recipe's embedded default starts from, unless it is cached under MIRAGE_CACHE's "
                    "models/base-<key> (the key: the tiny model's spec, the base recipe, the corpus spec and the "
                    "code that shapes the base); prints what it builds, a progress bar over the training steps, "
                    "and the path.")
    build.add_argument("--recipe", default=DEFAULT_RECIPE,
                       help=f"the recipe whose model.embedded spec names the base (default {DEFAULT_RECIPE})")
    add_override_arguments(build, "applied to the recipe, e.g. model.embedded.text_layers=2")
    build.set_defaults(func=_build)
