"""``mirage-ds eval`` and ``mirage-ds shortcut``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirage_ds.cli.options import (JudgeChoice, Renamed, add_judge_argument, add_model_arguments, add_template_argument,
                                   judge_choice)
from mirage_ds.data.schema import DataError
from mirage_ds.data.template import EVAL_TEMPLATE
from mirage_ds.eval.prompts import PROMPT_VERSIONS

if TYPE_CHECKING:
    from mirage_ds.eval.sharding import Ranks


def _no_silent_fallback(run_dir: Path) -> Path:
    """The embedded corpus's eval shards for an embedded run; a run that names a real model or real data
    must be given its eval data explicitly (its synthetic eval set would measure nothing it learned)."""
    from mirage_ds.config import load_config
    from mirage_ds.data.corpus import ensure_synthetic, real_inputs

    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"no --vlguard/--data given and no run config at {run_dir / 'config.yaml'} to find the embedded corpus from")
    cfg = load_config(str(run_dir / "config.yaml"))
    real = real_inputs(cfg)
    if real:
        raise DataError(f"run {run_dir} names {', '.join(real)}: pass its eval data (--vlguard DIR --images DIR, or "
                        "--data SHARDS); the embedded synthetic eval set only fits runs on the embedded model and corpus")
    return ensure_synthetic(cfg.data.synthetic)


def _judges(args: argparse.Namespace, judge: JudgeChoice, device: str, out_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(harm judge, harm judge for the attacked shots, what eval.json records about them) from the flags."""
    if judge.model is None:
        return None, None, {"model": "none (keyword-only ASR, or the payload marker on the synthetic corpus)"}
    from mirage_ds.eval.judges import CachedJudge
    from mirage_ds.eval.relevance import JudgeModel, RelevanceJudge
    from mirage_ds.models.loading import DTYPES, resolve_dtype

    dtype = resolve_dtype(args.dtype, judge.model, device)
    model = JudgeModel(judge.model, max_new_tokens=args.judge_max_new_tokens, batch_size=args.judge_batch_size,
                       device=device, dtype=DTYPES[dtype])
    after_prompt = args.judge_prompt_after or args.judge_prompt
    cache = out_dir / "verdicts.sqlite"
    before = CachedJudge(RelevanceJudge(model, args.judge_prompt), cache)
    after = before if after_prompt == args.judge_prompt else CachedJudge(RelevanceJudge(model, after_prompt), cache)
    return before, after, {**model.describe(), "dtype": dtype, "prompt_before": args.judge_prompt,
                           "prompt_after": after_prompt}


def _print_header(model_dir: Path, eval_set: dict[str, Any], judge: JudgeChoice, chosen: str) -> None:
    """The run's header (stderr): the model, the eval set and the judge, with ``(default)`` where no option chose
    them; eval.json records the same as ``eval_set`` and ``judge.chosen``."""
    given = [f"{key} {eval_set[key]}" for key in ("vlguard", "images", "spavl", "data", "utility") if eval_set[key]]
    default = f" ({eval_set['chosen']})" if eval_set["chosen"].startswith("default") else ""
    harm = f" + model:{judge.model}" if judge.model else ""
    print(f"eval: model {model_dir}\n  eval set: {', '.join(given)}{default}\n  judge: keyword:{judge.keywords}{harm}"
          f"{' (default)' if chosen == 'default' else ''}", file=sys.stderr)


def _warn_placeholders(count: int, total: int) -> None:
    if count:
        print(f"warning: {count} of {total} prompts use placeholder images; their rates do not measure the model "
              "on the real images", file=sys.stderr)


def _enclosing_run(model_dir: Path) -> Path | None:
    """The tracked training run whose directory holds ``model_dir`` directly (``RUN/export``, ``RUN/export-merged``):
    a run directory has ``config.yaml`` and, when tracked, ``mlflow_run.json``. A deeper directory (a LoRA
    export's ``base/``) is not the run's model."""
    run_dir = model_dir.resolve().parent
    if not (run_dir / "config.yaml").is_file():
        return None
    from mirage_ds.tracking.mlflow_run import RUN_FILE  # imports MLflow: only for a model inside a run directory

    return run_dir if (run_dir / RUN_FILE).is_file() else None


def _eval(args: argparse.Namespace) -> int:
    run_dir = Path(args.run) if args.run else None
    model_dir = Path(args.model) if args.model else (run_dir / "export" if run_dir else None)
    if model_dir is None or not model_dir.is_dir():
        raise DataError(f"model directory {model_dir} does not exist (pass --run OUTPUT_DIR or --model EXPORT_DIR)")
    if run_dir is None:
        run_dir = _enclosing_run(model_dir)
        if run_dir is not None and int(os.environ.get("RANK", "0")) == 0:
            print(f"eval: {model_dir} is inside the tracked run {run_dir}: the results attach to its MLflow run, as with "
                  f"--run {run_dir}", file=sys.stderr)
    if args.vlguard and args.data:
        raise DataError("pass one of --vlguard (the paper's four cases) and --data (shards, rule-based attacks)")
    judge = judge_choice(args.judge)
    data, utility_dir = (Path(args.data) if args.data else None), (Path(args.utility) if args.utility else None)
    chosen = "--vlguard/--data/--spavl"
    if not args.vlguard and data is None and not args.spavl:
        if run_dir is None:
            raise DataError("no eval data: pass --vlguard DIR --images DIR, --data SHARDS, or --run of an embedded run")
        corpus = _no_silent_fallback(run_dir)  # before the heavy imports: a refusal costs no model load
        data, utility_dir = corpus / "eval", utility_dir or corpus / "utility"
        chosen = "default: the run's embedded corpus"
    eval_set = {"chosen": chosen, "vlguard": args.vlguard, "images": args.images, "spavl": args.spavl,
                "data": data and str(data), "utility": utility_dir and str(utility_dir)}

    from mirage_ds.engine.distributed import teardown_distributed
    from mirage_ds.eval.sharding import join_ranks

    ranks = join_ranks()
    clean = False
    try:
        code = _eval_on_ranks(args, judge, ranks, run_dir, model_dir, data, utility_dir, eval_set)
        clean = True
        return code
    finally:
        teardown_distributed(clean)


def _eval_on_ranks(args: argparse.Namespace, judge: JudgeChoice, ranks: Ranks, run_dir: Path | None, model_dir: Path,
                   data: Path | None, utility_dir: Path | None, eval_set: dict[str, Any]) -> int:
    """Every rank builds the same cases and generates its share of the batches; rank 0 judges and writes (after
    a header naming the model, the eval set and the judge, each marked where it is the default)."""
    import torch

    from mirage_ds.data.shards import read_samples
    from mirage_ds.eval.cases import ImageSource, paper_cases, rule_cases
    from mirage_ds.eval.generation import Generator, load_for_eval
    from mirage_ds.eval.report import row_of, write_report
    from mirage_ds.eval.table import Table
    from mirage_ds.eval.suite import EvalSettings, evaluate
    from mirage_ds.models.loading import DTYPES, default_device, resolve_dtype

    settings = EvalSettings(shots=args.shots, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            limit=args.limit, keywords=judge.keywords, seed=args.seed, template=args.template)
    if args.vlguard:
        images = ImageSource(Path(args.images) if args.images else None, args.placeholder_images)
        cases, protocol = paper_cases(Path(args.vlguard), images, settings.limit), "vlguard-kshot"
    elif data is not None:
        cases = rule_cases(read_samples(data), settings.shots, settings.attack_word, settings.modify_word,
                           settings.seed, settings.limit)
        protocol = "rule-based"
    else:
        cases, protocol = [], "spavl"
    if args.spavl:  # SPA-VL's harm (ASR) and help (RR) rows beside the others, never pooled with them
        from mirage_ds.eval.spavl import spavl_cases

        cases += spavl_cases(Path(args.spavl), Path(args.spavl_images) if args.spavl_images else None, settings.limit)
        protocol = protocol if protocol == "spavl" else f"{protocol}+spavl"
    asked = [a for case in cases for a in case.asked()]
    judged = {"chosen": " ".join(f"--judge {spec}" for spec in args.judge) or "default"}
    if ranks.leader:
        _print_header(model_dir, eval_set, judge, judged["chosen"])
        _warn_placeholders(sum(a.placeholder for a in asked), len(asked))
    utility = None
    if utility_dir is not None:
        utility = [(r, png) for r, png in read_samples(utility_dir, settings.limit) if r.answers]

    out_dir = Path(args.out) if args.out else (run_dir / "eval" if run_dir else Path("eval"))
    torch.manual_seed(args.seed)
    device = args.device or default_device()
    model, tokenizer, image_processor = load_for_eval(model_dir, DTYPES[resolve_dtype(args.dtype, model_dir, device)])
    generator = Generator(model.to(device), tokenizer, image_processor, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, pad_to_square=args.pad_to_square, template=settings.template,
                          progress=ranks.leader)
    # Only rank 0 judges: a judge model is loaded once, not once per rank.
    harm, harm_after, judge_info = _judges(args, judge, device, out_dir) if ranks.leader else (None, None, {})
    judge_info = {**judge_info, **judged}
    name = args.name or (run_dir.name if run_dir else model_dir.name)
    result = evaluate(generator, name, cases, settings, harm=harm, harm_after=harm_after, utility=utility,
                      protocol=protocol, judge_info=judge_info, eval_set=eval_set, ranks=ranks)
    if result is None:
        return 0
    paths = write_report(result, out_dir, run_dir, sample=args.sample)
    print(Table((row_of(result.to_dict()),)).to_markdown(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _shortcut(args: argparse.Namespace) -> int:
    from mirage_ds.eval.shortcut import first_word_table

    table = first_word_table(args.path, by=args.by)
    print(table.table(args.top))
    if args.plot:
        table.plot(args.plot, n=args.top)
        print(f"wrote {args.plot}")
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval", help="ASR/RR before and after one-word attacks per subset, degenerate outputs, utility",
        description="The paper's four cases with --vlguard DIR --images DIR (test.json; test_what_3shot.json, "
                    "test_share_1shot.json), or rule-based one-word rewrites of shard records with --data, or "
                    "the embedded eval set of an embedded run with --run alone. Results go to eval.json and "
                    "eval_table.md, and to the run's MLflow run when --run names a tracked run or --model lies directly "
                    "in one (RUN/export, RUN/export-merged: as --run RUN, which it says). Across ranks: "
                    "deepspeed --num_gpus N --no_local_rank --module mirage_ds.cli.main eval ... (or torchrun "
                    "--nproc_per_node N -m mirage_ds.cli.main eval ...): each rank generates whole batches, rank 0 "
                    "judges and writes; the results equal one process's.")
    ev.add_argument("--run", help="a training output_dir (uses its export/ and config)")
    ev.add_argument("--model", help="an exported model directory (default: RUN/export); one directly inside a tracked "
                                    "run (RUN/export-merged) attaches the results to that run")
    ev.add_argument("--spavl", help="SPA-VL directory (test/harm-*.parquet and test/help-*.parquet, or harm/help "
                    ".parquet/.json/.jsonl): rows spavl_harm (ASR) and spavl_help (RR); alone or beside --vlguard/--data")
    ev.add_argument("--spavl-images", help="directory SPA-VL image paths resolve under (when not embedded)")
    ev.add_argument("--vlguard", help="VLGuard directory with test.json and the paper's K-shot files (four cases)")
    ev.add_argument("--images", help="VLGuard images root: each record's image is DIR/<source>/<file>")
    ev.add_argument("--placeholder-images", action="store_true",
                    help="use seeded placeholders for images missing under --images (or for all, without it); "
                         "counted in eval.json and warned about")
    ev.add_argument("--data", help="eval shard directory, attacked with rule-based rewrites (default: the embedded corpus's eval/)")
    ev.add_argument("--utility", help="utility shard directory with reference answers")
    ev.add_argument("--out", help="output directory (default: RUN/eval)")
    ev.add_argument("--name", help="model name in the table")
    ev.add_argument("--shots", type=int, default=3, help="rule-based shots per query (the paper's files fix their own)")
    ev.add_argument("--max-new-tokens", type=int, default=96, help="the paper uses 256; the synthetic payloads need ~80")
    ev.add_argument("--batch-size", type=int, default=16, help="prompts generated at once (default 16)")
    add_template_argument(ev, EVAL_TEMPLATE, "the Safety Mirage evaluation scripts' (training and `mirage-ds utility` "
                                             "default to vicuna_v1, LLaVA-1.5's own)")
    add_model_arguments(ev, "the evaluated model and a model judge")
    ev.add_argument("--pad-to-square", action=argparse.BooleanOptionalAction, default=True,
                    help="pad images to square as in training (the official evaluation does not)")
    ev.add_argument("--limit", type=int, default=None, help="first N originals and N attacked queries per subset")
    add_judge_argument(ev, "keyword[:VERSION] (default keyword): RR and ASR count refusals with that keyword list, "
                           "and ASR is keyword-only (or the payload marker on the synthetic corpus); model:PATH: a "
                           "local HF VLM judges harm behind the keyword filter (the relevance judge; paper: "
                           "Qwen2.5-VL-7B-Instruct). Repeat to pair a keyword version with a model")
    ev.add_argument("--keywords", action=Renamed, new="--judge keyword:VERSION")
    ev.add_argument("--judge-model", action=Renamed, new="--judge model:PATH")
    ev.add_argument("--judge-prompt", default="paper-single-v1", choices=PROMPT_VERSIONS,
                    help="judge prompt version for every ASR case")
    ev.add_argument("--judge-prompt-after", choices=PROMPT_VERSIONS,
                    help="a different prompt for the attacked shots (the official code uses paper-3shot-v1 there)")
    ev.add_argument("--judge-max-new-tokens", type=int, default=200, help="the paper's judge generates 200")
    ev.add_argument("--judge-batch-size", type=int, default=8, help="answers the judge model reads at once (default 8)")
    ev.add_argument("--sample", type=int, default=50, help="generations written to generations.jsonl")
    ev.add_argument("--seed", type=int, default=0, help="seed of the rule-based rewrites and of torch (default 0)")
    ev.set_defaults(func=_eval)

    sc = sub.add_parser("shortcut", help="first-word frequency by label (VLGuard JSON, K-shot files, shard dirs)")
    sc.add_argument("path", help="a VLGuard JSON file, a K-shot file or a shard directory")
    sc.add_argument("--by", choices=["label", "subset"], default="label",
                    help="group first words by safe/unsafe label or by VLGuard subset (default label)")
    sc.add_argument("--top", type=int, default=10, help="first words shown per group (default 10)")
    sc.add_argument("--plot", help="write a bar chart PNG here")
    sc.set_defaults(func=_shortcut)
