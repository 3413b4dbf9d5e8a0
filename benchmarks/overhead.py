"""What the framework costs over a bare DeepSpeed loop: ``sft_lora`` / ``sft_full`` on 1 and 2 ranks, time per
step and samples/s side by side in one run.

    .venv/bin/python benchmarks/overhead.py [--recipes sft_lora sft_full] [--ranks 1 2] [--steps 60] \\
        [--warmup 10] [--repeats 2] [-- dotted.key=value ...]

Framework: ``deepspeed --num_gpus N launcher/run.py --recipe R`` as a user runs it (streamer with its
workers, per-step all-reduce of the loss terms, metrics.jsonl + MLflow into a temporary store, tqdm).
Baseline: ``benchmarks/bare_loop.py`` under the same launcher: the same model (in train mode), micro batch,
ZeRO JSON and AdamW parameter groups, over the same batches preloaded into memory, with nothing else in the
loop (so decoding the data counts as the framework's cost). Overrides after
``--`` go to both sides (e.g. ``-- model.embedded.text_hidden=512``).

Time per step is wall clock between rank 0's consecutive step lines, stamped here as they arrive, so it
includes everything the framework does between steps (logging too). The first ``--warmup`` steps are
skipped; the figure is the median over the remaining steps of all repeats. Repeats alternate framework
and baseline, so load from other processes on a shared machine lands on both alike. The framework's own
in-step time and data wait (``perf/samples_per_s``, ``perf/data_wait`` in metrics.jsonl; they exclude
logging) are shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirage_ds.config import load_config
from mirage_ds.ports import free_port

REPO = Path(__file__).resolve().parent.parent
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
STEP_LINE = re.compile(r"^step (\d+)\b")


def step_intervals(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[list[float], list[str]]:
    """Run ``cmd``: (seconds between consecutive ``step K`` lines on its stdout, indexed by K - 2; the
    other stdout lines). Its stderr goes to ``log``."""
    stamps: list[float] = []
    other: list[str] = []
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        for line in proc.stdout:
            if STEP_LINE.match(line):
                stamps.append(time.perf_counter())
            else:
                other.append(line.rstrip("\n"))
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    return [b - a for a, b in zip(stamps, stamps[1:])], other


def logged_steps(out_dir: Path, samples_per_step: int, warmup: int) -> list[tuple[float, float]]:
    """(in-step seconds, fraction of it spent waiting for data) per step after warm-up, from metrics.jsonl."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(samples_per_step / row["perf/samples_per_s"], row["perf/data_wait"]) for row in rows if row["step"] > warmup]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["sft_lora", "sft_full"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="recipe overrides for both sides, after --")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # a shared machine's load, printed with the table: it moves single timings

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    rows: list[tuple[str, int, float, float, float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for recipe in args.recipes:
            micro = load_config(recipe, args.overrides).micro_batch_size
            for ranks in args.ranks:
                launch = [DEEPSPEED, "--num_gpus", str(ranks)]
                framework: list[float] = []
                bare: list[float] = []
                logged: list[tuple[float, float]] = []
                for repeat in range(args.repeats):
                    out = Path(tmp) / f"{recipe}-{ranks}-{repeat}"
                    cmd = [*launch, "--master_port", str(free_port()), "launcher/run.py", "--recipe", recipe,
                           f"output_dir={out}", f"max_steps={args.steps}", "log_every=1", *args.overrides]
                    framework += step_intervals(cmd, Path(f"{out}.framework.log"), env)[0][args.warmup - 1:]
                    logged += logged_steps(out, micro * ranks, args.warmup)
                    cmd = [*launch, "--master_port", str(free_port()), "benchmarks/bare_loop.py", "--recipe", recipe,
                           "--steps", str(args.steps), *args.overrides]
                    bare += step_intervals(cmd, Path(f"{out}.bare.log"), env)[0][args.warmup - 1:]
                fw, base = statistics.median(framework), statistics.median(bare)
                fw_in, wait = (statistics.median(column) for column in zip(*logged))
                rows.append((recipe, ranks, fw, fw_in, wait, base, micro * ranks))
                print(f"{recipe} {ranks} rank(s): framework {1000 * fw:.1f} ms/step ({1000 * fw_in:.1f} in-step), "
                      f"bare {1000 * base:.1f} ms/step, {len(framework)} / {len(bare)} steps", flush=True)

    print(f"\n# framework vs bare DeepSpeed, median ms per step after {args.warmup} warm-up steps, "
          f"{args.repeats} interleaved repeats of {args.steps} steps; load average (1 min) {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print("| recipe | ranks | framework ms | (in-step ms, data wait) | bare ms | framework samples/s | bare samples/s "
          "| time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe, ranks, fw, fw_in, wait, base, samples in rows:
        print(f"| {recipe} | {ranks} | {1000 * fw:.1f} | {1000 * fw_in:.1f}, {100 * wait:.1f}% | {1000 * base:.1f} | "
              f"{samples / fw:.1f} | {samples / base:.1f} | {fw / base:.3f} |")
    for recipe, ranks, fw, _, _, base, _ in rows:
        print(f"ratio overhead {recipe} {ranks}rank: {fw / base:.3f}x")


if __name__ == "__main__":
    main()
