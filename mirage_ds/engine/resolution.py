"""What a run's requests resolve to, on every rank alike and before any rank trains: ``epochs`` to
``max_steps``, and ``model.attn_implementation`` to the implementation this machine can run.

The resolved config is what runs and what ``config.yaml`` and MLflow record; ``record`` says how it was
reached (the ``resolved`` block of ``config.yaml``, the ``resolved.*`` MLflow params), ``header`` is what
rank 0 prints before the first step, and ``warnings`` holds one line per requested feature that is not
available here (the run goes on without it and says so once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirage_ds.config import TrainConfig
from mirage_ds.data.corpus import resolve_streams
from mirage_ds.data.writer import read_manifest
from mirage_ds.losses.registry import build_loss
from mirage_ds.models.adapters import attn_implementation


@dataclass(frozen=True)
class Resolution:
    cfg: TrainConfig
    record: dict[str, Any] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def epoch_stream(streams: tuple[str, ...]) -> str:
    """The stream whose samples make an epoch: the retain set for a loss that reads one, else the first
    stream (SFT's train stream). The official unlearning trainer (docs/paper-protocol.md, section 3) is an HF
    Trainer whose train dataset is the retain set; it draws the forget batches beside it from their own
    iterator, so its "1 epoch" (NPO full) and "10 epochs" (NPO LoRA) count retain samples."""
    return "retain" if "retain" in streams else streams[0]


def steps_per_epoch(samples: int, micro_batch_size: int, grad_accum: int, world: int) -> int:
    """Optimizer steps in one epoch of ``samples``, as the HF Trainer of the official code counts them: its
    DistributedSampler pads the set to a multiple of the world, a last short micro-batch still counts, and a
    remainder of micro-batches short of ``grad_accum`` makes no step (at least one step per epoch)."""
    per_rank = math.ceil(samples / world)
    micro_batches = math.ceil(per_rank / micro_batch_size)
    return max(micro_batches // grad_accum, 1)


def stream_samples(source: Path | list[Path]) -> int:
    """Samples in a stream's shard directory (or directories), from their manifests: nothing is read."""
    return sum(read_manifest(path).samples for path in (source if isinstance(source, list) else [source]))


def resolve_run(cfg: TrainConfig, world: int) -> Resolution:
    """``cfg`` as it will run on ``world`` ranks, with the record, header and warnings of the resolution."""
    record: dict[str, Any] = {}
    header: list[str] = []
    warnings: list[str] = []
    if cfg.epochs is not None:
        stream = epoch_stream(build_loss(cfg.loss, cfg.model).needs.streams)
        samples = stream_samples(resolve_streams(cfg, (stream,))[stream])
        per_epoch = steps_per_epoch(samples, cfg.micro_batch_size, cfg.grad_accum, world)
        max_steps = cfg.epochs * per_epoch
        record.update(epochs=cfg.epochs, epoch_stream=stream, epoch_samples=samples, steps_per_epoch=per_epoch,
                      max_steps=max_steps)
        header.append(f"max_steps {max_steps} = {cfg.epochs} epochs x {per_epoch} steps: {samples} {stream} samples over "
                      f"{world} ranks x micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum}")
        cfg = cfg.model_copy(update={"max_steps": max_steps, "epochs": None})
    ran, why = attn_implementation(cfg.model.attn_implementation)
    if why is not None:
        record["attn_implementation_requested"] = cfg.model.attn_implementation
        warnings.append(f"model.attn_implementation={cfg.model.attn_implementation} requested but {why}: the run uses "
                        f"{ran}, and its config and MLflow params say so")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"attn_implementation": ran})})
    return Resolution(cfg, record, header, warnings)
