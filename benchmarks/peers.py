"""The framework vs TRL's ``SFTTrainer`` (what a user would pick instead) on the same tiny LLaVA, samples,
ZeRO-3 JSON and steps: samples/s side by side in one run.

    .venv/bin/pip install -e ".[bench]"     # trl
    .venv/bin/python benchmarks/peers.py [--recipes sft_full sft_lora] [--ranks 1] [--steps 60] \\
        [--warmup 10] [--repeats 2] [-- dotted.key=value ...]

Framework: ``deepspeed --num_gpus N launcher/run.py --recipe R`` as a user runs it. TRL:
``deepspeed --num_gpus N benchmarks/trl_sft.py --recipe R``, Trainer's own DeepSpeed integration (accelerate)
over the same ZeRO JSON, the same model object (the framework's ``build_model``: vision tower frozen,
PEFT LoRA for ``*_lora``), micro batch, learning rate, schedule, clipping, data workers and logging every
step. TRL cannot read webdataset shards, so ``trl_sft.py`` converts the same shard samples into TRL's
vision prompt-completion rows (its docstring says how); it checks on every converted sample that TRL's
collator yields the framework's input ids, loss masks and pixels exactly, and this script reports how
many do. What differs is each side's own work per step: streaming vs a ``datasets`` table plus
per-batch processor calls, and what each logs (the framework: loss terms, metrics.jsonl, MLflow; TRL:
loss, grad norm, entropy and token accuracy).

One rank by default, ZeRO-3 on both sides: on a machine without GPUs accelerate gives Trainer no
distributed backend (its CPU path is plain multi-CPU, never DeepSpeed), so under 2 DeepSpeed ranks
Trainer counts a world of 1 while DeepSpeed counts 2, and the batch sizes disagree before the first
step. On GPUs ``--ranks 2`` compares 2 ranks.

Time per step is wall clock between rank 0's consecutive step lines, stamped here as they arrive; the
first ``--warmup`` steps are skipped; median over the rest of all repeats, which alternate the two sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from overhead import DEEPSPEED, free_port, step_intervals

from mirage_ds.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["sft_full", "sft_lora"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="recipe overrides for both sides, after --")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # a shared machine's load, printed with the table: it moves single timings

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    rows: list[tuple[str, int, float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for recipe in args.recipes:
            micro = load_config(recipe, args.overrides).micro_batch_size
            for ranks in args.ranks:
                launch = [DEEPSPEED, "--num_gpus", str(ranks)]
                framework: list[float] = []
                trl: list[float] = []
                conversion = "conversion: not reported"
                for repeat in range(args.repeats):
                    out = Path(tmp) / f"{recipe}-{ranks}-{repeat}"
                    cmd = [*launch, "--master_port", str(free_port()), "launcher/run.py", "--recipe", recipe,
                           f"output_dir={out}", f"max_steps={args.steps}", "log_every=1", *args.overrides]
                    framework += step_intervals(cmd, Path(f"{out}.framework.log"), env)[0][args.warmup - 1:]
                    cmd = [*launch, "--master_port", str(free_port()), "benchmarks/trl_sft.py", "--recipe", recipe,
                           "--steps", str(args.steps), "--out", f"{out}-trl", *args.overrides, "log_every=1"]
                    intervals, lines = step_intervals(cmd, Path(f"{out}.trl.log"), env)
                    trl += intervals[args.warmup - 1:]
                    conversion = next((line for line in lines if line.startswith("conversion:")), conversion)
                fw, peer = statistics.median(framework), statistics.median(trl)
                rows.append((recipe, ranks, fw, peer, micro * ranks))
                print(f"{recipe} {ranks} rank(s): framework {1000 * fw:.1f} ms/step, TRL {1000 * peer:.1f} ms/step, "
                      f"{len(framework)} / {len(trl)} steps; TRL side {conversion}", flush=True)

    print(f"\n# framework vs TRL SFTTrainer, median ms per step after {args.warmup} warm-up steps, "
          f"{args.repeats} interleaved repeats of {args.steps} steps; load average (1 min) {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print("| recipe | ranks | framework ms | TRL ms | framework samples/s | TRL samples/s | framework/TRL samples/s |")
    print("|---|---|---|---|---|---|---|")
    for recipe, ranks, fw, peer, samples in rows:
        print(f"| {recipe} | {ranks} | {1000 * fw:.1f} | {1000 * peer:.1f} | {samples / fw:.1f} | {samples / peer:.1f} | "
              f"{peer / fw:.3f} |")
    ratios = [peer / fw for _, _, fw, peer, _ in rows]
    for (recipe, ranks, _, _, _), ratio in zip(rows, ratios):
        print(f"ratio framework/TRL samples/s {recipe} {ranks}rank: {ratio:.3f}x")
    print("# the last line: geometric mean of the rows above")
    print(f"ratio framework/TRL samples/s: {statistics.geometric_mean(ratios):.3f}x")


if __name__ == "__main__":
    main()
