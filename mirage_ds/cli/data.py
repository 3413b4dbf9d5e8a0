"""``mirage-ds data build synthetic|vlguard|llava|spavl``: build shard directories.

``add_data_commands`` registers the parser and sets ``func=run_data``; ``cli/main.py`` calls it and
prints DataError / SampleError messages (one line each) without a traceback.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mirage_ds.data.converters import ShardOptions
from mirage_ds.data.llava import convert_llava
from mirage_ds.data.schema import DataError
from mirage_ds.data.spavl import convert_spavl
from mirage_ds.data.synthetic import DIRS, SyntheticSpec, build_synthetic
from mirage_ds.data.vlguard import convert_vlguard
from mirage_ds.data.writer import Manifest, read_manifest

def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data build <source>`` to ``subparsers`` (the object ``add_subparsers()`` returned)."""
    data = subparsers.add_parser("data", help="build and inspect shard directories")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser("build", help="build a shard directory from a source")
    sources = build.add_subparsers(dest="source", required=True)

    synthetic = sources.add_parser("synthetic", help="the embedded synthetic safety corpus (sft/ forget/ retain/ eval/ utility/)")
    synthetic.add_argument("--seed", type=int, help="override spec.seed")
    synthetic.add_argument("--image-size", type=int, help="override spec.image_size")
    synthetic.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any SyntheticSpec field (repeatable)")

    for name, help_text in (
        ("vlguard", "VLGuard train.json / test.json"),
        ("llava", "LLaVA conversation JSON"),
        ("spavl", "SPA-VL-style rows (image, question, chosen, rejected), parquet or JSON"),
    ):
        parser = sources.add_parser(name, help=help_text)
        parser.add_argument("input", type=Path, help="the source file")
        parser.add_argument("--images", type=Path, help="image root; without it images are generated placeholders")
        parser.add_argument("--placeholder-size", type=int, default=ShardOptions.placeholder_size)
        if name == "spavl":
            parser.add_argument(
                "--chosen-role", choices=("retain", "sft"), default="retain", help="role of the chosen answer (rejected -> forget)"
            )
        else:
            parser.add_argument("--role", choices=("sft", "forget", "retain"), default="sft")

    for parser in sources.choices.values():
        parser.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
        parser.add_argument("--shard-size", type=int, help="samples per shard")
        parser.add_argument("--min-shards", type=int, help="split small datasets into at least this many shards")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        parser.set_defaults(func=run_data)
    return data


def _spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    for key in ("seed", "image_size", "shard_size", "min_shards"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return overrides


def _build_synthetic(args: argparse.Namespace) -> str:
    try:
        spec = SyntheticSpec(**_spec_overrides(args))
    except ValidationError as err:
        first = err.errors()[0]
        allowed = ", ".join(SyntheticSpec.model_fields)
        raise DataError(f"synthetic spec: field {'.'.join(str(p) for p in first['loc'])!r}: {first['msg']} (fields: {allowed})") from None
    build_synthetic(spec, args.out, overwrite=args.overwrite)
    parts = [f"{name} {_describe(read_manifest(args.out / name))}" for name in DIRS]
    return f"wrote {args.out}: " + "; ".join(parts)


def _describe(manifest: Manifest) -> str:
    return f"{manifest.samples} samples in {len(manifest.shards)} shards"


def _convert(args: argparse.Namespace) -> str:
    defaults = ShardOptions()
    options = ShardOptions(
        shard_size=args.shard_size or defaults.shard_size,
        min_shards=args.min_shards or defaults.min_shards,
        overwrite=args.overwrite,
        placeholder_size=args.placeholder_size,
    )
    if args.source == "vlguard":
        manifest = convert_vlguard(args.input, args.out, images_dir=args.images, role=args.role, options=options)
    elif args.source == "llava":
        manifest = convert_llava(args.input, args.out, images_dir=args.images, role=args.role, options=options)
    else:
        manifest = convert_spavl(args.input, args.out, images_dir=args.images, chosen_role=args.chosen_role, options=options)
    counts = ", ".join(f"{key} {n}" for key, n in manifest.counts.items() if key.startswith(("role.", "subset.")))
    return f"wrote {args.out}: {_describe(manifest)} ({counts})"


def run_data(args: argparse.Namespace) -> int:
    """Run a parsed ``data build`` command; prints one summary line. Errors propagate as DataError."""
    start = time.perf_counter()
    summary = _build_synthetic(args) if args.source == "synthetic" else _convert(args)
    print(f"{summary} [{time.perf_counter() - start:.1f} s]")
    return 0
