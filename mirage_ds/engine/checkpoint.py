"""Checkpoints: DeepSpeed's own, resumable (the final export is ``engine/export.py``).

A checkpoint is written aside as ``checkpoints/.partial-step-N`` by every rank, and only after a barrier
fsynced, renamed to ``checkpoints/step-N`` and recorded in ``checkpoints/latest`` (``mirage_ds.atomic``). A
kill during a save therefore leaves the previous checkpoint as ``latest``, untouched: no save removes it
before the new one is complete and ``latest`` names the new one. A ``latest`` naming a directory that is
gone is an error, never a silent start from step 0.
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

from mirage_ds.atomic import publish_dir, write_text
from mirage_ds.config import ConfigError
from mirage_ds.engine.faults import Faults
from mirage_ds.tracking import METRICS_FILE

LATEST = "latest"


def _latest_tag(ckpt_root: Path) -> str | None:
    pointer = ckpt_root / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint ``ckpt_root/latest`` names; None when there is no ``latest``. ``ConfigError`` when it names
    a directory that is not there: starting from step 0 instead would silently train the run again."""
    tag = _latest_tag(ckpt_root)
    if tag is None:
        return None
    if not (ckpt_root / tag).is_dir():
        found = ", ".join(sorted(p.name for p in ckpt_root.glob("step-*") if p.is_dir())) or "none"
        raise ConfigError(f"{ckpt_root / LATEST} names {tag}, which does not exist (checkpoints there: {found}); "
                          f"write one of them into {LATEST}, or move {ckpt_root} aside to start afresh")
    return ckpt_root / tag


def resume_point(output_dir: Path, resume: str) -> Path | None:
    """The checkpoint a run in ``output_dir`` starts from (None: step 0). A fresh run (``resume=never``) is
    refused a directory that already holds a run, checkpoints or logged steps, instead of training over it
    (and emptying its ``metrics.jsonl``); ``resume=auto`` continues it."""
    latest = latest_checkpoint(output_dir / "checkpoints")
    metrics = output_dir / METRICS_FILE
    if resume == "never" and (latest is not None or (metrics.is_file() and metrics.stat().st_size > 0)):
        held = "checkpoints" if latest is not None else f"logged steps ({METRICS_FILE})"
        raise ConfigError(f"output_dir={str(output_dir)!r} already holds {held}; pass resume=auto or a new output_dir")
    return latest


def save_checkpoint(engine: Any, ckpt_root: Path, step: int, rank_state: dict[str, Any], keep: int,
                    faults: Faults) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory. ``faults``: the run's test
    seam (``engine/faults.py``), which may kill the rank between the partial write and the rename."""
    tag = f"step-{step:08d}"
    final, part_dir = ckpt_root / tag, ckpt_root / f".partial-{tag}"
    if _latest_tag(ckpt_root) == tag:
        # Loaded at this step and nothing trained since (a run resumed at its last step): the checkpoint already
        # holds this state, and writing it again would have to take the only good checkpoint out of the way.
        return final
    ckpt_root.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank()
    if rank == 0 and part_dir.exists():
        shutil.rmtree(part_dir)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_root), tag=part_dir.name, save_latest=False)
    faults.in_save(step)
    (part_dir / f"rank{rank:05d}.json").write_text(json.dumps(rank_state))
    save_file({"cpu": torch.get_rng_state()}, str(part_dir / f"rng{rank:05d}.safetensors"))
    dist.barrier()  # every rank's shard is on disk before the checkpoint becomes visible
    if rank == 0:
        # A step-N that exists here is not `latest` (a save cut short after its rename): it is replaced.
        publish_dir(part_dir, final, overwrite=True)
        write_text(ckpt_root / LATEST, tag)
        _prune(ckpt_root, keep, tag)
    dist.barrier()
    return final


def _prune(ckpt_root: Path, keep: int, latest: str) -> None:
    """Keep ``latest`` and the ``keep - 1`` checkpoints before it. A checkpoint after it was left by a run cut
    short before its ``latest`` moved: the resumed run trains those steps again, so it goes too, with
    partial saves and directories a cut-short publish set aside."""
    tags = sorted(p.name for p in ckpt_root.glob("step-*") if p.is_dir())
    kept = [tag for tag in tags if tag <= latest][-keep:]
    stale = [ckpt_root / tag for tag in tags if tag not in kept]
    for old in [*stale, *ckpt_root.glob(".partial-*"), *ckpt_root.glob(".step-*.old-*")]:
        shutil.rmtree(old, ignore_errors=True)


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
