"""Checkpoints: DeepSpeed's own, resumable (the final export is ``engine/export.py``).

A checkpoint is written aside as ``checkpoints/.partial-step-N`` by every rank, and only after a barrier
renamed to ``checkpoints/step-N`` and recorded in ``checkpoints/latest`` (written to a temp file and
renamed). A kill during a save therefore leaves the previous checkpoint as ``latest``, untouched.
Per-rank state (data position, RNG) sits beside DeepSpeed's files as JSON / safetensors. DeepSpeed's own
files (model and optimizer partitions) are torch pickles that it loads with ``weights_only=False``: resume
only from checkpoints this run (or one you trust) wrote; the export (safetensors) is the file to share.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from mirage_ds.engine.faults import Faults

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


def save_checkpoint(engine: Any, ckpt_root: Path, step: int, rank_state: dict[str, Any], keep: int,
                    faults: Faults) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory. ``faults``: the run's test
    seam (``engine/faults.py``), which may kill the rank between the partial write and the rename."""
    tag = f"step-{step:08d}"
    partial = f".partial-{tag}"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank()
    if rank == 0 and (ckpt_root / partial).exists():
        shutil.rmtree(ckpt_root / partial)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_root), tag=partial, save_latest=False)
    faults.in_save(step)
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
