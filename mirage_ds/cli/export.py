"""``mirage-ds export RUN``: what a run's export is (a full checkpoint or a LoRA adapter), checked from its
files; ``mirage-ds export RUN --merge``: a LoRA run's adapter merged into its base, as a full checkpoint.

The merged checkpoint has the base's key layout, shards, dtype (or ``--dtype`` / the run's ``export.dtype``)
and every non-weight file of the base, so vLLM, lmms-eval and HF pipelines load it as they load the base.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, get_args

import yaml

from mirage_ds.config import ConfigError, ExportConfig

MERGE_ONLY = ("out", "dtype", "device", "overwrite")


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to ``subparsers`` (the object ``add_subparsers()`` returned)."""
    export = subparsers.add_parser(
        "export", help="what a run's export is (full checkpoint or LoRA adapter); with --merge, a LoRA adapter "
                       "merged into its base",
        description="Without --merge: one line per export of RUN (RUN/export, and RUN/export-merged when there "
                    "is one) saying what it is, checked from its files' headers; exit 2 when it is missing or "
                    "incomplete. With --merge: the LoRA adapter merged into its base (fp32, rounded once), "
                    "written in the base's layout and files.")
    export.add_argument("run", type=Path, metavar="RUN", help="a training output_dir (or its export/ directory)")
    export.add_argument("--merge", action="store_true", help="merge a LoRA run's adapter into its base")
    export.add_argument("--out", type=Path, help="with --merge: where to write (default: RUN/export-merged)")
    export.add_argument("--overwrite", action="store_true", help="with --merge: replace an existing --out directory")
    export.add_argument("--dtype", choices=get_args(ExportConfig.model_fields["dtype"].annotation),
                        help="with --merge: the written tensors' dtype (default: the run's export.dtype; 'source': "
                             "each tensor in the base checkpoint's dtype). The merge itself runs in fp32")
    export.add_argument("--device", help="with --merge: where the fp32 merge runs (default cpu; cuda is faster "
                                         "where the fp32 model fits in GPU memory)")
    export.set_defaults(func=run_export)
    return export


def _run_dtype(run_dir: Path) -> str:
    """The run's ``export.dtype`` from its saved config.yaml ("source" when absent)."""
    saved = run_dir / "config.yaml"
    config = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    return ((config or {}).get("export") or {}).get("dtype", "source")


def run_export(args: argparse.Namespace) -> int:
    """Run a parsed ``export`` command; prints one line per export (or one summary line with --merge).
    Errors propagate as ConfigError."""
    from mirage_ds.engine.export import describe_export, merge_lora_export

    start = time.perf_counter()
    is_export = any((args.run / name).is_file() for name in ("config.json", "adapter_config.json"))
    export = args.run if is_export else args.run / "export"
    run_dir = export.parent if export.name == "export" else export
    if not args.merge:
        given = [f"--{name}" for name in MERGE_ONLY if getattr(args, name) not in (None, False)]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --merge")
        if not export.is_dir():
            raise ConfigError(f"{export} does not exist (RUN is a training output_dir or its export/ directory)")
        print(describe_export(export))
        if (run_dir / "export-merged").is_dir():
            print(describe_export(run_dir / "export-merged"))
        return 0
    out = args.out or run_dir / "export-merged"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists (use --overwrite to replace it)")
    dtype = args.dtype or _run_dtype(run_dir)
    merge_lora_export(export, out, dtype, args.device or "cpu", overwrite=args.overwrite)
    print(f"wrote {out}: {export} merged into its base (dtype {dtype}) [{time.perf_counter() - start:.1f} s]")
    return 0
