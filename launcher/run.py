"""The one training entry: ``deepspeed launcher/run.py --recipe NAME [--paper-scale] [dotted.key=value ...]``
(an override may also be given as ``--set dotted.key=value``, as on every ``mirage-ds`` command that takes them).

``--paper-scale`` applies the recipe's ``paper_scale`` overrides (the paper's LLaVA-1.5-7B settings) before
the command line's, and requires the inputs that block names (``mirage-ds recipes NAME --paper-scale``); it
refuses shards that hold generated placeholder images unless ``data.allow_placeholder_images=true``.

Every rank parses and validates the recipe, builds what it starts from (the pretrained embedded base,
once, printed with a progress bar: ``models.loading.ensure_model_path``), then checks it against the
model it names (layer range, trainable pattern), before any distributed work: a bad key or value fails
fast with one line (printed once, by rank 0) and exit code 2. The loop itself is ``mirage_ds.engine.loop.train``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

# Run from a checkout (``launcher/run.py`` beside ``mirage_ds/``), import the checkout's package; an installed
# wheel's copy (``mirage_ds/launcher/run.py``, also ``python -m mirage_ds.launcher.run``) imports the installed one.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "mirage_ds" / "__init__.py").is_file():
    sys.path.insert(0, str(_CHECKOUT))

from mirage_ds.engine.stop import StopSignal  # noqa: E402  (light: installed before the heavy imports)


def main(argv: list[str] | None = None) -> int:
    stop = StopSignal()  # before anything slow: a preemption signal during start-up must not kill the rank
    from mirage_ds.cli.errors import report_user_error, user_error_types
    from mirage_ds.cli.options import add_override_arguments
    from mirage_ds.config import load_config

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", required=True, help="recipe name in recipes/ or a path to a YAML file")
    parser.add_argument("--paper-scale", action="store_true", help="apply the recipe's paper-scale overrides first")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    add_override_arguments(parser, "dotted config key=value, e.g. optim.lr=1e-3 (the value read as YAML)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # DeepSpeed calls torch.distributed collectives that torch marks deprecated, once per bucket per step.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
    rank = int(os.environ.get("RANK", "0"))
    try:
        overrides = args.overrides
        if args.paper_scale:
            from mirage_ds.paper_scale import paper_scale

            overrides = paper_scale(args.recipe).apply(overrides)
        cfg = load_config(args.recipe, overrides)
        from mirage_ds.engine.preflight import check_against_model, check_data
        from mirage_ds.engine.resolution import resolve_run
        from mirage_ds.models.loading import ensure_model_path

        check_data(cfg, args.paper_scale)  # manifests only: before the build phase, which may train for minutes
        resolution = resolve_run(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # epochs -> max_steps; attn fallback
        cfg = resolution.cfg
        if rank == 0:
            for line in resolution.warnings:
                print(f"warning: {line}", file=sys.stderr)
            for line in resolution.header:
                print(line)
        ensure_model_path(cfg.model)  # the build phase: trains the pretrained embedded base once if the run needs it
        check_against_model(cfg)
        from mirage_ds.engine.loop import train

        return int(train(cfg, stop, resolution.record))
    except user_error_types() as err:
        report_user_error(err, rank)
        return 2


if __name__ == "__main__":
    sys.exit(main())
