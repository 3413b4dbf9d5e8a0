"""RMU step time with the truncated forward vs the full forward, and NPO-LoRA peak memory with the
adapter-disabled reference vs a frozen copy, each measured side by side in one run.

    .venv/bin/python benchmarks/rmu_step.py [--layers 16] [--hidden 256] [--steps 6] [--batch 4] \\
        [--npo-layers 32] [--npo-hidden 1024] [--part rmu npo]

Both parts use the project's own losses (RMULoss, NPOLoss) on a LLaVA built from config; the model is
larger than the embedded default so that "l = depth/4" means something (16 layers: l = 4). Memory is
the peak RSS (VmHWM) of a fresh subprocess per variant (torch's CPU allocations are invisible to
tracemalloc). The memory part's model is big enough for weights to dominate: 32 layers of hidden 1024,
2.0 GiB of fp32 weights against about 0.4 GiB of activations for the batch under gradient checkpointing
(as the paper-scale recipes train). Its random-init checkpoint is written once, into a temporary cache,
before either child starts, so neither child's peak includes writing it. The weights are memory-mapped
from safetensors, and RSS counts the pages of each mapping, so the frozen copy counts once more, as a
second copy would on a device.
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

from mirage_ds.config import LoraSpec, ModelConfig, TinyModelSpec
from mirage_ds.data.images import placeholder_png
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import Record, Turn
from mirage_ds.data.streamer import collate_padded
from mirage_ds.data.template import Template
from mirage_ds.engine.loop import restrict_trainable
from mirage_ds.engine.reference import Reference
from mirage_ds.losses.base import LossContext, model_inputs
from mirage_ds.losses.npo import NPOLoss
from mirage_ds.losses.rmu import RMULoss
from mirage_ds.models.hooks import hooked_forward
from mirage_ds.models.loading import build_model, load_model, resolve_model_path
from mirage_ds.specs.losses import NPOConfig, RMUConfig


def spec(layers: int, hidden: int) -> TinyModelSpec:
    return TinyModelSpec(text_layers=layers, text_hidden=hidden, text_intermediate=hidden * 4, text_heads=max(4, hidden // 64))


def batches(bundle, n: int) -> dict:
    pre = Preprocessor(Template(bundle.tokenizer, bundle.n_image_tokens, 512), bundle.image_processor, True)
    out = {}
    for role in ("forget", "retain"):
        samples = []
        for i in range(n):
            record = Record(id=f"{role}{i}", role=role, source="synthetic", turns=[
                Turn(role="user", text=f"Can you explain step {i} of the process in the picture in detail?"),
                Turn(role="assistant", text="Sure. First gather the parts, then assemble them carefully. " * 3)])
            samples.append(pre.train_example(record, placeholder_png(record.id), record.id))
        out[role] = collate_padded(bundle.tokenizer.pad_token_id)(samples)
    return out


def rmu_step_time(args: argparse.Namespace, truncate: bool) -> float:
    cfg = ModelConfig(embedded=spec(args.layers, args.hidden), embedded_base="random")  # timing needs no trained base
    bundle = build_model(cfg)
    layer = args.layers // 4
    loss_fn = RMULoss(RMUConfig(layer=layer, truncate=truncate, kernel="eager"), cfg)
    restrict_trainable(bundle.model, loss_fn.needs.trainable)
    frozen = load_model(bundle.path, cfg).eval().requires_grad_(False)
    ctx = LossContext(reference=Reference(lambda b: hooked_forward(frozen, model_inputs(b), layer, truncate), frozen))
    optimizer = torch.optim.AdamW([p for p in bundle.model.parameters() if p.requires_grad], lr=1e-4)
    data = batches(bundle, args.batch)
    times = []
    for _ in range(args.steps + 1):
        start = time.perf_counter()
        loss_fn(bundle.model, data, ctx).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:])  # the first step pays one-time costs


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: after the parent's vfork + exec that
    also holds the parent's own peak (here, building a 2 GB checkpoint)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this measurement needs Linux)")


def npo_config(args: argparse.Namespace) -> ModelConfig:
    # Gradient checkpointing, as the paper-scale recipes use, keeps the activations small next to the weights.
    return ModelConfig(embedded=spec(args.npo_layers, args.npo_hidden), embedded_base="random",
                       lora=LoraSpec(r=8, alpha=16), gradient_checkpointing=True)


def npo_peak_rss(args: argparse.Namespace, variant: str) -> None:
    """Child process: one NPO-LoRA step; prints the peak RSS and the peak above the post-import baseline, MiB."""
    baseline = peak_rss_mib()  # torch + transformers imported
    cfg = npo_config(args)
    bundle = build_model(cfg)
    bundle.model.train()  # from_pretrained returns eval mode, and HF checkpoints activations only in train mode
    if variant == "adapters-off":
        peft_model = bundle.model

        def run(batch: dict) -> dict:
            with peft_model.disable_adapter():
                return {"logits": peft_model(**model_inputs(batch)).logits}

        reference = Reference(run, peft_model)
    else:
        frozen = load_model(bundle.path, cfg).eval().requires_grad_(False)
        reference = Reference(lambda batch: {"logits": frozen(**model_inputs(batch)).logits}, frozen)
    loss_fn = NPOLoss(NPOConfig.model_validate({"preset": "paper"}), cfg)
    loss_fn(bundle.model, batches(bundle, args.batch), LossContext(reference=reference)).loss.backward()
    peak = peak_rss_mib()
    print(json.dumps({"peak_rss_mib": peak, "above_baseline_mib": peak - baseline}))


def npo_peaks(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Peak RSS of one NPO-LoRA step per reference variant, each in a fresh child process."""
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="npo-memory-") as cache:
        # A fixed mmap threshold: glibc's adaptive one would keep freed activation blocks in its heap, and
        # RSS would show the heap's high-water mark instead of the memory the step held.
        env = {**os.environ, "MIRAGE_CACHE": cache, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        os.environ["MIRAGE_CACHE"] = cache  # the checkpoint (2 GB by default) is built here, then removed
        resolve_model_path(npo_config(args))
        for variant in ("adapters-off", "frozen-copy"):
            cmd = [sys.executable, __file__, "--npo-child", variant, "--npo-layers", str(args.npo_layers),
                   "--npo-hidden", str(args.npo_hidden), "--batch", str(args.batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{variant} child exited {done.returncode}:\n{done.stderr[-3000:]}")
            peaks[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--npo-layers", type=int, default=32)
    parser.add_argument("--npo-hidden", type=int, default=1024, help="hidden size for the memory part (bigger: weights dominate)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--part", nargs="+", choices=["rmu", "npo"], default=["rmu", "npo"])
    parser.add_argument("--npo-child", choices=["adapters-off", "frozen-copy"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.npo_child:
        npo_peak_rss(args, args.npo_child)
        return

    if "rmu" in args.part:
        full = rmu_step_time(args, truncate=False)
        truncated = rmu_step_time(args, truncate=True)
        print(f"RMU step, {args.layers} layers, hidden {args.hidden}, l = {args.layers // 4}, batch {args.batch} forget + {args.batch} retain")
        print(f"  full forward      : {1000 * full:8.1f} ms")
        print(f"  truncated forward : {1000 * truncated:8.1f} ms")
        print(f"ratio RMU step truncated / full: {truncated / full:.2f}x")

    if "npo" in args.part:
        peaks = npo_peaks(args)
        print(f"NPO-LoRA one step ({args.npo_layers} layers, hidden {args.npo_hidden}, batch {args.batch} forget), "
              "peak RSS of a fresh process (total / above the post-import baseline)")
        for variant, label in (("adapters-off", "adapters disabled as reference"), ("frozen-copy", "separate frozen copy")):
            print(f"  {label:<31}: {peaks[variant]['peak_rss_mib']:8.1f} / {peaks[variant]['above_baseline_mib']:8.1f} MiB")
        a, b = peaks["adapters-off"], peaks["frozen-copy"]
        print(f"ratio NPO-LoRA peak RSS above baseline, adapters-off / frozen copy: "
              f"{a['above_baseline_mib'] / b['above_baseline_mib']:.2f}x")
        print(f"ratio NPO-LoRA peak RSS, adapters-off / frozen copy: {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
