"""Checkpoints (DeepSpeed's own, resumable) and the final export (HF safetensors or a PEFT adapter).

A checkpoint is written aside as ``checkpoints/.partial-step-N`` by every rank, and only after a barrier
renamed to ``checkpoints/step-N`` and recorded in ``checkpoints/latest`` (written to a temp file and
renamed). A kill during a save therefore leaves the previous checkpoint as ``latest``, untouched.
Per-rank state (data position, RNG) sits beside DeepSpeed's files as JSON / safetensors: no pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

LATEST = "latest"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    tag_dir = ckpt_root / pointer.read_text().strip()
    return tag_dir if tag_dir.is_dir() else None


def save_checkpoint(engine: Any, ckpt_root: Path, step: int, rank_state: dict[str, Any], keep: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    tag = f"step-{step:08d}"
    partial = f".partial-{tag}"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank()
    if rank == 0 and (ckpt_root / partial).exists():
        shutil.rmtree(ckpt_root / partial)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_root), tag=partial, save_latest=False)
    _crash_here_for_tests(step)
    part_dir = ckpt_root / partial
    (part_dir / f"rank{rank:05d}.json").write_text(json.dumps(rank_state))
    save_file({"cpu": torch.get_rng_state()}, str(part_dir / f"rng{rank:05d}.safetensors"))
    dist.barrier()  # every rank's shard is on disk before the checkpoint becomes visible
    if rank == 0:
        final = ckpt_root / tag
        if final.exists():
            shutil.rmtree(final)
        part_dir.rename(final)
        _write_atomic(ckpt_root / LATEST, tag)
        _prune(ckpt_root, keep)
    dist.barrier()
    return ckpt_root / tag


def _crash_here_for_tests(step: int) -> None:
    """Fault injection for the kill-during-save test: ``MIRAGE_CRASH_IN_SAVE=N`` SIGKILLs every rank
    after DeepSpeed wrote the partial step-N checkpoint and before it becomes visible."""
    if os.environ.get("MIRAGE_CRASH_IN_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _prune(ckpt_root: Path, keep: int) -> None:
    tags = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(engine: Any, tag_dir: Path) -> dict[str, Any]:
    """Restore engine (params, optimizer, scheduler) and this rank's state; returns the rank state."""
    rank = dist.get_rank()
    load_path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise RuntimeError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
    state_file = tag_dir / f"rank{rank:05d}.json"
    if not state_file.is_file():
        raise RuntimeError(f"{state_file}: missing (was the checkpoint written with a different world size?)")
    torch.set_rng_state(load_file(str(tag_dir / f"rng{rank:05d}.safetensors"))["cpu"])
    return json.loads(state_file.read_text())


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full state dict on rank 0 (None elsewhere). Collective under ZeRO-3.

    ZeRO-3 parameters are partitioned (numel 0 locally), so ``module.state_dict()`` would be empty;
    DeepSpeed gathers them (``stage3_gather_16bit_weights_on_model_save``; despite the name the tensors keep
    the training dtype, fp32 on CPU).
    """
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if dist.get_rank() == 0 else None
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()} if dist.get_rank() == 0 else None


def export_model(engine: Any, bundle: Any, export_dir: Path, is_lora: bool) -> None:
    """Collective. Writes ``export_dir`` atomically: HF safetensors (full) or a PEFT adapter + base pointer."""
    state = consolidated_state_dict(engine)
    if dist.get_rank() != 0:
        dist.barrier()
        return
    tmp = export_dir.with_name(f".{export_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module = engine.module
    module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    bundle.tokenizer.save_pretrained(tmp)
    bundle.image_processor.save_pretrained(tmp)
    if is_lora:
        # The adapter needs its base: record where it is and, for the embedded tiny model, ship a copy.
        base = Path(bundle.path)
        info = {"base_model": str(base.resolve())}
        if sum(f.stat().st_size for f in base.rglob("*") if f.is_file()) < 2**28:
            shutil.copytree(base, tmp / "base")
            info["base_copy"] = "base"
        (tmp / "base_model.json").write_text(json.dumps(info, indent=2))
    if export_dir.exists():
        shutil.rmtree(export_dir)
    tmp.rename(export_dir)
    dist.barrier()
