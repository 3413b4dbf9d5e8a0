"""``mirage-ds export --merge RUN``: a LoRA run's adapter merged into its base, as a full checkpoint.

The merged checkpoint has the base's key layout, shards, dtype (or ``--dtype`` / the run's ``export.dtype``)
and every non-weight file of the base, so vLLM, lmms-eval and HF pipelines load it as they load the base.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to ``subparsers`` (the object ``add_subparsers()`` returned)."""
    export = subparsers.add_parser("export", help="merge a LoRA run's adapter into its base (the base's layout and files)")
    export.add_argument("--merge", type=Path, required=True, metavar="RUN",
                        help="a LoRA run's output_dir (or its export/ directory)")
    export.add_argument("--out", type=Path, help="where to write the merged checkpoint (default: RUN/export-merged)")
    export.add_argument("--dtype", choices=("source", "fp32", "bf16", "fp16"),
                        help="tensor dtype (default: the run's export.dtype; 'source': the base checkpoint's)")
    export.set_defaults(func=run_export)
    return export


def _run_dtype(run_dir: Path) -> str:
    """The run's ``export.dtype`` from its saved config.yaml ("source" when absent)."""
    saved = run_dir / "config.yaml"
    config = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    return ((config or {}).get("export") or {}).get("dtype", "source")


def run_export(args: argparse.Namespace) -> int:
    """Run a parsed ``export`` command; prints one summary line. Errors propagate as ConfigError."""
    from mirage_ds.engine.export import merge_lora_export

    start = time.perf_counter()
    adapter = args.merge if (args.merge / "adapter_config.json").is_file() else args.merge / "export"
    run_dir = adapter.parent if adapter.name == "export" else adapter
    out = args.out or run_dir / "export-merged"
    dtype = args.dtype or _run_dtype(run_dir)
    merge_lora_export(adapter, out, dtype)
    print(f"wrote {out}: {adapter} merged into its base (dtype {dtype}) [{time.perf_counter() - start:.1f} s]")
    return 0
