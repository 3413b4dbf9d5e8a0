"""``mirage-ds utility``: lmms-eval's utility tasks (VQAv2, TextVQA, ScienceQA-IMG, VizWiz) on an export.

The model answers through the project's own preprocessing (``eval/lmms.py``), the tasks ask with
LLaVA-1.5's prompts (``eval/utility_tasks.py``), and lmms-eval scores. Needs the optional ``lmms`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mirage_ds.cli.options import add_model_arguments, add_template_argument
from mirage_ds.data.schema import DataError
from mirage_ds.eval.utility_tasks import PROFILES, UTILITY_TEMPLATE


def add_utility_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``utility`` to ``subparsers`` (the object ``add_subparsers()`` returned)."""
    ut = subparsers.add_parser(
        "utility", help="lmms-eval utility tasks on an export, with LLaVA-1.5's prompts (needs the lmms extra)",
        description="Scores an export with lmms-eval's tasks (profiled with LLaVA-1.5's prompts: "
                    f"{', '.join(PROFILES)}). Offline: put local task YAMLs in an --include-path directory; "
                    "one named like an upstream task replaces it. Writes utility.json.")
    ut.add_argument("--run", type=Path, help="a training output_dir (uses its export/)")
    ut.add_argument("--model", type=Path, help="an exported model directory (default: RUN/export)")
    ut.add_argument("--task", dest="tasks", action="append", required=True, metavar="NAME",
                    help="lmms-eval task name (repeatable)")
    ut.add_argument("--include-path", dest="include_paths", action="append", type=Path, default=[], metavar="DIR",
                    help="directory of local task YAMLs (repeatable)")
    ut.add_argument("--limit", type=int, help="first N documents of each task")
    ut.add_argument("--batch-size", type=int, default=16, help="prompts generated at once (default 16)")
    add_model_arguments(ut)  # auto: LLaVA-1.5's own fp16 on a GPU, as its scripts run
    add_template_argument(ut, UTILITY_TEMPLATE, "LLaVA-1.5's VQA and ScienceQA scripts' (`mirage-ds eval` asks with "
                                                "llava_v1, the safety evaluation's)")
    ut.add_argument("--pad-to-square", action=argparse.BooleanOptionalAction, default=True,
                    help="pad images to square, as LLaVA-1.5's VQA scripts and training do")
    ut.add_argument("--out", type=Path, help="output directory (default: RUN/eval, or ./utility)")
    ut.add_argument("--seed", type=int, default=0, help="lmms-eval's random, numpy, torch and few-shot seeds (default 0)")
    ut.set_defaults(func=run_utility)
    return ut


def run_utility(args: argparse.Namespace) -> int:
    """Run a parsed ``utility`` command: one line per task, and OUT/utility.json."""
    model_dir = args.model or (args.run / "export" if args.run else None)
    if model_dir is None or not model_dir.is_dir():
        raise DataError(f"model directory {model_dir} does not exist (pass --run OUTPUT_DIR or --model EXPORT_DIR)")
    for path in args.include_paths:
        if not path.is_dir():
            raise DataError(f"--include-path {path} is not a directory")
    try:
        from mirage_ds.eval.lmms import MirageLMM, check_tasks, evaluate_utility, task_manager
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from loguru import logger

    # lmms-eval logs through loguru, at DEBUG unless told; its own CLI sets the level the same way.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    manager = task_manager(args.include_paths)
    try:
        check_tasks(manager, args.tasks)  # before the model load
    except ValueError as err:
        raise DataError(str(err)) from None

    import torch

    from mirage_ds.models.loading import DTYPES, default_device, resolve_dtype

    torch.manual_seed(args.seed)
    device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, model_dir, device)
    plugin = MirageLMM.from_export(model_dir, DTYPES[dtype], batch_size=args.batch_size,
                                   template=args.template, pad_to_square=args.pad_to_square)
    plugin.model.to(device)
    out_dir = args.out or (args.run / "eval" if args.run else Path("utility"))
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = evaluate_utility(plugin, args.tasks, manager, limit=args.limit, out_dir=out_dir, seed=args.seed)
    report = {
        "model": str(model_dir),
        "tasks": scores,
        "prompts": {t: PROFILES.get(t) for t in args.tasks},  # None: the task's own prompt
        "generation": {"template": args.template, "pad_to_square": args.pad_to_square, "batch_size": args.batch_size,
                       "dtype": dtype, "device": device, "decoding": "greedy"},
        "include_paths": [str(p) for p in args.include_paths],
        "limit": args.limit,
        "lmms_eval": version("lmms-eval"),
    }
    path = out_dir / "utility.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for task, score in scores.items():
        print(f"{task}: {score['metric']} {score['value']:.4f} (n={score['n']})")
    print(f"wrote {path}")
    return 0

