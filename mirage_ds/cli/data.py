"""``mirage-ds data build synthetic|vlguard|llava|spavl`` and ``mirage-ds data harmful-responses``.

``add_data_commands`` registers the parsers (``func=run_data`` / ``run_harmful_responses``);
``cli/main.py`` calls them and prints DataError / SampleError messages (one line each, exit 2) without a
traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mirage_ds.data.converters import ShardOptions
from mirage_ds.data.llava import convert_llava
from mirage_ds.data.schema import DataError
from mirage_ds.data.spavl import convert_spavl
from mirage_ds.data.synthetic import DIRS, SyntheticSpec, build_synthetic
from mirage_ds.data.topup import TopUp
from mirage_ds.data.vlguard import convert_vlguard, subsets_named
from mirage_ds.data.writer import Manifest, read_manifest, write_shards

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
    vlguard = sources.choices["vlguard"]
    vlguard.add_argument("--subset", action="append", default=[], metavar="NAME",
                         help="unsafes | safe_safes | safe_unsafes (repeatable; default: all three)")
    vlguard.add_argument("--top-up", type=Path, action="append", default=[], metavar="DIR",
                         help="shard directory to draw extra samples from until --to (repeatable: one pool)")
    vlguard.add_argument("--to", type=int, metavar="N", help="with --top-up: total samples to reach")
    vlguard.add_argument("--seed", type=int, default=0, help="with --top-up: seed of the draw (default 0)")

    for parser in sources.choices.values():
        _add_output_arguments(parser)
        parser.set_defaults(func=run_data)

    harmful = data_commands.add_parser(
        "harmful-responses",
        help="forget set: a model's most harmful answer to each query, picked by a judge",
        description="Generate K answers per query with --model (candidate 0 greedy, 1..K-1 sampled with --seed), "
                    "score them with --judge and write each record with its highest-scoring answer as role "
                    "'forget'; meta.harmful_responses keeps the model, judge, every candidate and score, and the "
                    "choice.",
    )
    harmful.add_argument("input", type=Path, nargs="+",
                         help="shard directories of the queries (data build vlguard --subset unsafes)")
    harmful.add_argument("--model", type=Path, required=True,
                         help="the answering model (an HF LLaVA checkpoint or a run's export)")
    harmful.add_argument("--judge", default="keyword",
                         help="keyword[:VERSION] (a refusal scores 0, anything else 1) or model:PATH "
                              "(a local HF model's probability of 'Yes, harmful'); default keyword")
    harmful.add_argument("--candidates", type=int, default=4, metavar="K", help="answers per query (default 4)")
    harmful.add_argument("--seed", type=int, default=0, help="seed of the sampled candidates (pass k uses seed + k)")
    harmful.add_argument("--temperature", type=float, default=1.0)
    harmful.add_argument("--top-p", type=float, default=0.9)
    harmful.add_argument("--max-new-tokens", type=int, default=256)
    harmful.add_argument("--batch-size", type=int, default=16, help="generation and judge batch size")
    harmful.add_argument("--template", default="llava_v1", help="system prompt of the answering model's template")
    harmful.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    harmful.add_argument("--device", help="default: cuda when available, else cpu")
    _add_output_arguments(harmful)
    harmful.set_defaults(func=run_harmful_responses)
    return data


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    parser.add_argument("--shard-size", type=int, help="samples per shard")
    parser.add_argument("--min-shards", type=int, help="split small datasets into at least this many shards")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


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


def _shard_options(args: argparse.Namespace, placeholder_size: int = ShardOptions.placeholder_size) -> ShardOptions:
    defaults = ShardOptions()
    return ShardOptions(
        shard_size=args.shard_size or defaults.shard_size,
        min_shards=args.min_shards or defaults.min_shards,
        overwrite=args.overwrite,
        placeholder_size=placeholder_size,
    )


def _top_up(args: argparse.Namespace) -> TopUp | None:
    if bool(args.top_up) != (args.to is not None):
        raise DataError("--top-up DIR and --to N go together")
    return TopUp(tuple(args.top_up), args.to, args.seed) if args.top_up else None


def _convert(args: argparse.Namespace) -> str:
    options = _shard_options(args, args.placeholder_size)
    if args.source == "vlguard":
        subsets, top_up = subsets_named(args.subset), _top_up(args)
        if args.role == "forget":
            print("note: VLGuard's answers to unsafe queries are refusals; NPO on them unlearns refusing. "
                  "The paper's forget set is built with `mirage-ds data harmful-responses`.", file=sys.stderr)
        manifest = convert_vlguard(args.input, args.out, images_dir=args.images, role=args.role, subsets=subsets,
                                   top_up_from=top_up, options=options)
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


def _judge(spec: str) -> Callable[[int, str, Any], Any]:
    """The scorer ``--judge`` names, checked now and built later (a model judge loads after generation)."""
    from mirage_ds.eval.harmful import KeywordScorer, ModelScorer

    kind, _, arg = spec.partition(":")
    if kind == "keyword":
        try:
            scorer = KeywordScorer(arg or None)
        except ValueError as err:
            raise DataError(f"--judge {spec!r}: {err}") from None
        return lambda batch_size, device, dtype: scorer
    if kind == "model" and arg:
        if not (Path(arg) / "config.json").is_file():
            raise DataError(f"--judge {spec!r}: {arg} has no config.json (a local HF checkpoint directory)")
        return lambda batch_size, device, dtype: ModelScorer(Path(arg), batch_size=batch_size, device=device, dtype=dtype)
    raise DataError(f"--judge {spec!r}: expected keyword[:VERSION] or model:PATH")


def run_harmful_responses(args: argparse.Namespace) -> int:
    """Run a parsed ``data harmful-responses`` command; prints one summary line. Errors propagate as DataError."""
    # torch and transformers load only for this command, not for every ``data build``.
    import torch

    from mirage_ds.eval.harmful import Candidates, decoding_provenance, generate_candidates, most_harmful
    from mirage_ds.data.shards import read_samples
    from mirage_ds.eval.generation import Generator, Prompt, load_for_eval

    start = time.perf_counter()
    # Every argument is checked before the generation, which takes hours at paper scale.
    if args.out.exists() and not args.overwrite:
        raise DataError(f"{args.out} already exists (use --overwrite to replace it)")
    if not (args.model / "config.json").is_file():
        raise DataError(f"--model {args.model}: no config.json (a local HF checkpoint or a run's export)")
    spec = Candidates(k=args.candidates, seed=args.seed, temperature=args.temperature, top_p=args.top_p)
    build_scorer = _judge(args.judge)
    options = _shard_options(args)
    samples = read_samples(list(args.input))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    model, tokenizer, image_processor = load_for_eval(args.model, dtype)
    generator = Generator(model.to(device), tokenizer, image_processor, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, template=args.template)
    candidates = generate_candidates(generator, [Prompt(r.id, r.question, png) for r, png in samples], spec)
    provenance = {"model": str(args.model.resolve()), "decoding": decoding_provenance(spec, generator)}
    del model, generator  # the answering model leaves memory before a model judge loads
    scorer = build_scorer(args.batch_size, device, dtype)
    manifest = write_shards(
        most_harmful(samples, candidates, scorer, provenance), args.out, shard_size=options.shard_size,
        min_shards=options.min_shards, overwrite=args.overwrite,
        created_by=f"mirage-ds data harmful-responses --model {args.model} --judge {args.judge} "
                   f"--candidates {spec.k} --seed {spec.seed}",
    )
    print(f"wrote {args.out}: {_describe(manifest)}, judge {scorer.name}@{scorer.version} "
          f"[{time.perf_counter() - start:.1f} s]")
    return 0
