"""``mirage-ds eval``, ``mirage-ds compare`` and ``mirage-ds shortcut``."""

from __future__ import annotations

import argparse
from pathlib import Path

from mirage_ds.data.schema import DataError


def _eval(args: argparse.Namespace) -> int:
    import torch

    from mirage_ds.config import load_config
    from mirage_ds.data.corpus import ensure_synthetic
    from mirage_ds.eval.generation import Generator, load_for_eval
    from mirage_ds.eval.judges import CachedJudge, RelevanceJudge
    from mirage_ds.eval.report import table_row, write_report
    from mirage_ds.eval.suite import EvalSettings, evaluate

    run_dir = Path(args.run) if args.run else None
    model_dir = Path(args.model) if args.model else (run_dir / "export" if run_dir else None)
    if model_dir is None or not model_dir.is_dir():
        raise DataError(f"model directory {model_dir} does not exist (pass --run OUTPUT_DIR or --model EXPORT_DIR)")
    data, utility = (Path(args.data) if args.data else None), (Path(args.utility) if args.utility else None)
    if data is None:
        if run_dir is None or not (run_dir / "config.yaml").is_file():
            raise DataError("no --data given and no run config to find the embedded corpus from")
        corpus = ensure_synthetic(load_config(str(run_dir / "config.yaml")).data.synthetic)
        data, utility = corpus / "eval", utility or corpus / "utility"
    out_dir = Path(args.out) if args.out else (run_dir / "eval" if run_dir else Path("eval"))
    settings = EvalSettings(shots=args.shots, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            limit=args.limit, keywords=args.keywords, seed=args.seed)
    torch.manual_seed(args.seed)
    model, tokenizer, image_processor = load_for_eval(model_dir)
    generator = Generator(model, tokenizer, image_processor, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    harm = CachedJudge(RelevanceJudge(args.judge_model), out_dir / "verdicts.sqlite") if args.judge_model else None
    name = args.name or (run_dir.name if run_dir else model_dir.name)
    result = evaluate(generator, name, data, utility, settings, harm=harm)
    paths = write_report(result, out_dir, run_dir)
    print(table_row(result.to_dict()))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from mirage_ds.eval.comparison import compare

    print(compare(args.experiment, Path(args.out), args.tracking_uri), end="")
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
    ev = sub.add_parser("eval", help="ASR/RR before and after one-word attacks, utility; attaches to the MLflow run")
    ev.add_argument("--run", help="a training output_dir (uses its export/ and config)")
    ev.add_argument("--model", help="an exported model directory (default: RUN/export)")
    ev.add_argument("--data", help="eval shard directory (default: the embedded corpus's eval/)")
    ev.add_argument("--utility", help="utility shard directory with reference answers")
    ev.add_argument("--out", help="output directory (default: RUN/eval)")
    ev.add_argument("--name", help="model name in the table")
    ev.add_argument("--shots", type=int, default=3)
    ev.add_argument("--max-new-tokens", type=int, default=96, help="the paper uses 256; the synthetic payloads need ~80")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--keywords", default="vlguard-v2", help="refusal keyword version (vlguard-v1, vlguard-v2, strict-v1)")
    ev.add_argument("--judge-model", help="local HF VLM path for the relevance harm judge (paper: Qwen2.5-VL-7B)")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval)

    cmp = sub.add_parser("compare", help="Table 1 comparison of an MLflow experiment's evaluated runs")
    cmp.add_argument("--experiment", default="mirage-ds")
    cmp.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db")
    cmp.add_argument("--out", default="runs/comparison")
    cmp.set_defaults(func=_compare)

    sc = sub.add_parser("shortcut", help="first-word frequency by label (VLGuard JSON, K-shot files, shard dirs)")
    sc.add_argument("path")
    sc.add_argument("--by", choices=["label", "subset"], default="label")
    sc.add_argument("--top", type=int, default=10)
    sc.add_argument("--plot", help="write a bar chart PNG here")
    sc.set_defaults(func=_shortcut)
