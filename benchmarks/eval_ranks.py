"""Evaluation throughput in one run: prompts/s on 1 and 2 ranks, and batched vs one-at-a-time judging.

    .venv/bin/python benchmarks/eval_ranks.py [--model EXPORT] [--judge-model PATH] [--prompts 96]
        [--batch-size 16] [--new-tokens 32] [--judge-prompts 32] [--judge-batch 8] [--threads 1]

Ranks: the same script runs as each rank under ``torch.distributed.run`` (1 rank, then 2). Each rank loads
the model, runs a warm-up, waits at a barrier, then times ``generate_across`` over the eval prompts (its
share of the batches and the gather to rank 0), as ``mirage-ds eval`` does under a launcher. The prompts
are the embedded eval set's with rule-based attacks (``eval/cases.py``). On CPU each rank is a process of
``--threads`` threads (a rank brings its own cores, as it brings its own GPU); on GPU each rank takes GPU
``local_rank % count``, so on a one-GPU host both ranks share it. Judging: the paper's relevance judge
(``eval/relevance.py``) over the same exchanges with batch 1 and batch ``--judge-batch``. Generated
lengths are pinned with ``min_new_tokens`` so both sides of each ratio do equal work; best of ``--repeats``.
Models default to the embedded tiny LLaVA (untrained) as both the evaluated model and the judge.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mirage_ds.data.corpus import ensure_synthetic
from mirage_ds.data.shards import read_samples
from mirage_ds.eval.cases import rule_cases
from mirage_ds.eval.generation import Generator, Prompt, load_for_eval
from mirage_ds.eval.judges import Exchange
from mirage_ds.eval.sharding import generate_across, join_ranks
from mirage_ds.specs.synthetic import SyntheticSpec


def _device(local_rank: int) -> str:
    return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"


def _prompts(n: int) -> list[Prompt]:
    """The first ``n`` prompts of the embedded eval set's cases (originals, then their attacked shots)."""
    cases = rule_cases(read_samples(ensure_synthetic(SyntheticSpec()) / "eval"), 3, "What", "Share")
    asked = [a for case in cases for a in case.asked()]
    return [Prompt(a.key, a.question, a.image) for a in asked[:n]]


def _default_model() -> Path:
    from mirage_ds.config import TinyModelSpec
    from mirage_ds.models.embedded import ensure_embedded_model

    return ensure_embedded_model(TinyModelSpec())


def rank_worker(args: argparse.Namespace) -> None:
    """One rank: time ``generate_across`` over the prompts; rank 0 writes prompts/s to ``args.worker``."""
    ranks = join_ranks()
    torch.set_num_threads(args.threads)
    model, tokenizer, image_processor = load_for_eval(Path(args.model))
    model.to(_device(int(os.environ.get("LOCAL_RANK", "0"))))
    model.generation_config.min_new_tokens = args.new_tokens
    generator = Generator(model, tokenizer, image_processor, batch_size=args.batch_size, max_new_tokens=args.new_tokens,
                          progress=False)
    prompts = _prompts(args.prompts)
    generate_across(generator, prompts[: args.batch_size * ranks.world], ranks)  # warm-up: kernels, caches
    best = 0.0
    for _ in range(args.repeats):
        if ranks.world > 1:
            dist.barrier()
        start = time.perf_counter()
        answers = generate_across(generator, prompts, ranks)  # rank 0 returns once every rank's share arrived
        best = max(best, len(prompts) / (time.perf_counter() - start))
    if ranks.leader:
        assert len(answers) == len(prompts)
        Path(args.worker).write_text(json.dumps({"prompts_per_s": best}))
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _ranks_rate(args: argparse.Namespace, world: int, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
           str(29400 + os.getpid() % 500 + world), __file__, "--worker", str(out), "--model", args.model,
           "--prompts", str(args.prompts), "--batch-size", str(args.batch_size), "--new-tokens", str(args.new_tokens),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if proc.returncode != 0:
        raise SystemExit(f"{world}-rank run failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _judge_rates(args: argparse.Namespace) -> dict[int, float]:
    """Exchanges/s of the relevance judge with batch 1 and batch ``args.judge_batch`` on the same exchanges."""
    from mirage_ds.eval.relevance import JudgeModel, RelevanceJudge

    torch.set_num_threads(args.threads)
    model = JudgeModel(args.judge_model, max_new_tokens=args.judge_new_tokens, device=_device(0))
    model.model.generation_config.min_new_tokens = args.judge_new_tokens
    exchanges = [Exchange(p.question, "Sure. First, gather the materials shown in the image, then follow these steps.",
                          image=p.image) for p in _prompts(args.judge_prompts)]
    model.batch_size = args.judge_batch
    RelevanceJudge(model).judge_all(exchanges[: args.judge_batch])  # warm-up
    rates: dict[int, float] = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        for batch in (1, args.judge_batch):
            model.batch_size = batch
            start = time.perf_counter()
            RelevanceJudge(model).judge_all(exchanges)
            rates[batch] = max(rates.get(batch, 0.0), len(exchanges) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an exported model directory (default: the embedded tiny LLaVA)")
    parser.add_argument("--judge-model", help="a local HF VLM for the relevance judge (default: --model)")
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--judge-prompts", type=int, default=32)
    parser.add_argument("--judge-batch", type=int, default=8)
    parser.add_argument("--judge-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank (and for the judge)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # set for the rank processes this script starts
    args = parser.parse_args()
    args.model = args.model or str(_default_model())
    if args.worker:
        rank_worker(args)
        return
    args.judge_model = args.judge_model or args.model
    _prompts(1)  # the eval set is built once here, not by two ranks racing on its lock
    with tempfile.TemporaryDirectory(prefix="eval-ranks-") as tmp:
        one, two = (_ranks_rate(args, world, Path(tmp) / f"ranks{world}.json") for world in (1, 2))
    judge = _judge_rates(args)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu, {args.threads} thread(s) per rank"
    print(f"device: {device}; model {Path(args.model).name}, judge {Path(args.judge_model).name}")
    print(f"{args.prompts} prompts, batch {args.batch_size}, {args.new_tokens} new tokens each; best of {args.repeats}")
    print(f"1 rank  : {one['prompts_per_s']:8.2f} prompts/s")
    print(f"2 ranks : {two['prompts_per_s']:8.2f} prompts/s")
    print(f"judge, {args.judge_prompts} exchanges, {args.judge_new_tokens} new tokens each:")
    print(f"  one at a time : {judge[1]:8.2f} exchanges/s")
    print(f"  batch {args.judge_batch:<7} : {judge[args.judge_batch]:8.2f} exchanges/s")
    print(f"ratio 2 ranks / 1 rank: {two['prompts_per_s'] / one['prompts_per_s']:.2f}x")
    print(f"ratio batched / one-at-a-time judging: {judge[args.judge_batch] / judge[1]:.2f}x")


if __name__ == "__main__":
    main()
