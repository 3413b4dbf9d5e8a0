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

from pydantic import ValidationError

from mirage_ds.cli.options import (JUDGE_SYNTAX, add_judge_argument, add_model_arguments, add_override_arguments,
                                   add_template_argument, judge_choice)
from mirage_ds.config import apply_overrides
from mirage_ds.data.converters import ShardOptions
from mirage_ds.data.llava import convert_llava
from mirage_ds.data.schema import DataError
from mirage_ds.data.spavl import convert_spavl
from mirage_ds.data.synthetic import DIRS, build_synthetic
from mirage_ds.data.template import EVAL_TEMPLATE
from mirage_ds.data.topup import TopUp
from mirage_ds.data.vlguard import convert_vlguard, subsets_named
from mirage_ds.data.writer import Manifest, read_manifest, write_shards
from mirage_ds.specs.synthetic import SyntheticSpec

# A recipe holds the corpus spec under this key; `data build synthetic` takes the same keys.
SPEC_PREFIX = "data.synthetic."


def add_data_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``data build <source>`` to ``subparsers`` (the object ``add_subparsers()`` returned)."""
    data = subparsers.add_parser("data", help="build and inspect shard directories")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND",
                                        help="build (a shard directory from a source) or harmful-responses")
    build = data_commands.add_parser("build", help="build a shard directory from a source")
    sources = build.add_subparsers(dest="source", required=True, metavar="SOURCE",
                                   help="what to build from; `mirage-ds data build SOURCE --help` for its options")

    synthetic = sources.add_parser("synthetic", help="the embedded synthetic safety corpus (sft/ forget/ retain/ eval/ utility/)")
    add_override_arguments(synthetic, f"the corpus keys of a recipe, {SPEC_PREFIX}<field>, e.g. {SPEC_PREFIX}what_rate=0.5 "
                                      f"(fields: {', '.join(SyntheticSpec.model_fields)})")
    synthetic.add_argument("--seed", type=int, help=f"the same as {SPEC_PREFIX}seed=N")
    synthetic.add_argument("--image-size", type=int, help=f"the same as {SPEC_PREFIX}image_size=N")

    for name, help_text in (
        ("vlguard", "VLGuard train.json / test.json"),
        ("llava", "LLaVA conversation JSON"),
        ("spavl", "SPA-VL-style rows (image, question, chosen, rejected), parquet or JSON"),
    ):
        parser = sources.add_parser(name, help=help_text)
        parser.add_argument("input", type=Path, help="the source file")
        parser.add_argument("--images", type=Path, help="image root; without it images are generated placeholders")
        parser.add_argument("--placeholder-size", type=int, default=ShardOptions.placeholder_size,
                            help=f"side in pixels of a generated placeholder image (default {ShardOptions.placeholder_size})")
        if name == "spavl":
            parser.add_argument(
                "--chosen-role", choices=("retain", "sft"), default="retain", help="role of the chosen answer (rejected -> forget)"
            )
        else:
            parser.add_argument("--role", choices=("sft", "forget", "retain"), default="sft",
                                help="the role every record gets: the stream it trains in (default sft)")
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
    add_judge_argument(harmful, "the one judge that scores the candidates: keyword[:VERSION] (default; a refusal "
                                "scores 0, anything else 1) or model:PATH (a local HF model's probability of "
                                "'Yes, harmful')")
    harmful.add_argument("--candidates", type=int, default=4, metavar="K", help="answers per query (default 4)")
    harmful.add_argument("--seed", type=int, default=0, help="seed of the sampled candidates (pass k uses seed + k)")
    harmful.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of candidates 1..K-1 (default 1.0)")
    harmful.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling of candidates 1..K-1 (default 0.9)")
    harmful.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer (default 256, as the paper's evaluation)")
    harmful.add_argument("--batch-size", type=int, default=16, help="generation and judge batch size")
    add_template_argument(harmful, EVAL_TEMPLATE, "the model answers as `mirage-ds eval` asks it, with the paper's "
                                                  "evaluation template")
    add_model_arguments(harmful, "the answering model and a model judge")
    _add_output_arguments(harmful)
    harmful.set_defaults(func=run_harmful_responses)
    return data


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (created atomically)")
    parser.add_argument("--shard-size", type=int, help="samples per shard")
    parser.add_argument("--min-shards", type=int, help="split small datasets into at least this many shards")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def _spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The spec's fields from the overrides, keyed as in a recipe (``data.synthetic.<field>=value``, values read
    as the config reads them), then from the flags that name a field."""
    for item in args.overrides:
        key = item.partition("=")[0]
        if "=" not in item or not key.startswith(SPEC_PREFIX):
            field = key.rsplit(".", 1)[-1] or "<field>"
            raise DataError(f"override {item!r}: data build synthetic takes the recipe's corpus keys, "
                            f"{SPEC_PREFIX}<field>=VALUE (e.g. {SPEC_PREFIX}{field}=...)")
    fields: dict[str, Any] = apply_overrides({}, args.overrides).get("data", {}).get("synthetic", {})
    for key in ("seed", "image_size", "shard_size", "min_shards"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    return fields


def _build_synthetic(args: argparse.Namespace) -> str:
    try:
        spec = SyntheticSpec(**_spec_overrides(args))
    except ValidationError as err:
        first = err.errors()[0]
        key = SPEC_PREFIX + ".".join(str(p) for p in first["loc"])
        allowed = ", ".join(SyntheticSpec.model_fields)
        raise DataError(f"synthetic corpus: key {key!r}: {first['msg']} (allowed here: {allowed})") from None
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


def _judge(spec: str) -> Callable[[int, str, str], Any]:
    """The scorer ``--judge`` names, checked now and built later (a model judge loads after generation);
    the builder takes the batch size, the device and ``--dtype``."""
    from mirage_ds.eval.harmful import KeywordScorer, ModelScorer
    from mirage_ds.models.loading import DTYPES, resolve_dtype

    choice = judge_choice([spec])
    if choice.model is None:
        scorer = KeywordScorer(choice.keywords)
        return lambda batch_size, device, dtype: scorer
    path = choice.model
    return lambda batch_size, device, dtype: ModelScorer(path, batch_size=batch_size, device=device,
                                                         dtype=DTYPES[resolve_dtype(dtype, path, device)])


def run_harmful_responses(args: argparse.Namespace) -> int:
    """Run a parsed ``data harmful-responses`` command; prints one summary line. Errors propagate as DataError."""
    # torch and transformers load only for this command, not for every ``data build``.
    from mirage_ds.eval.harmful import Candidates, decoding_provenance, generate_candidates, most_harmful
    from mirage_ds.data.shards import read_samples
    from mirage_ds.eval.generation import Generator, Prompt, load_for_eval
    from mirage_ds.models.loading import DTYPES, default_device, resolve_dtype

    start = time.perf_counter()
    # Every argument is checked before the generation, which takes hours at paper scale.
    if args.out.exists() and not args.overwrite:
        raise DataError(f"{args.out} already exists (use --overwrite to replace it)")
    if not (args.model / "config.json").is_file():
        raise DataError(f"--model {args.model}: no config.json (a local HF checkpoint or a run's export)")
    spec = Candidates(k=args.candidates, seed=args.seed, temperature=args.temperature, top_p=args.top_p)
    if len(args.judge) > 1:
        raise DataError(f"--judge given {len(args.judge)} times: harmful-responses scores with one judge, {JUDGE_SYNTAX}")
    judge = args.judge[0] if args.judge else "keyword"
    build_scorer = _judge(judge)
    options = _shard_options(args)
    samples = read_samples(list(args.input))
    device = args.device or default_device()
    dtype = resolve_dtype(args.dtype, args.model, device)

    model, tokenizer, image_processor = load_for_eval(args.model, DTYPES[dtype])
    generator = Generator(model.to(device), tokenizer, image_processor, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, template=args.template)
    candidates = generate_candidates(generator, [Prompt(r.id, r.question, png) for r, png in samples], spec)
    provenance = {"model": str(args.model.resolve()), "dtype": dtype, "decoding": decoding_provenance(spec, generator)}
    del model, generator  # the answering model leaves memory before a model judge loads
    scorer = build_scorer(args.batch_size, device, args.dtype)
    manifest = write_shards(
        most_harmful(samples, candidates, scorer, provenance), args.out, shard_size=options.shard_size,
        min_shards=options.min_shards, overwrite=args.overwrite,
        created_by=f"mirage-ds data harmful-responses --model {args.model} --judge {judge} "
                   f"--candidates {spec.k} --seed {spec.seed}",
    )
    print(f"wrote {args.out}: {_describe(manifest)}, judge {scorer.name}@{scorer.version} "
          f"[{time.perf_counter() - start:.1f} s]")
    return 0
