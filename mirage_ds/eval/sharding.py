"""Evaluation across ranks: each rank generates whole batches of the prompt list, rank 0 merges.

``mirage-ds eval`` under a launcher (``deepspeed --num_gpus N --no_local_rank --module mirage_ds.cli.main eval
...`` or ``torchrun --nproc_per_node N -m mirage_ds.cli.main eval ...``) reads its slice from the launcher's
``RANK`` / ``WORLD_SIZE``; during training the live eval (``engine/live_eval.py``) uses the run's ranks.

The split is over batches, not prompts. The prompts are cut into batches of ``batch_size`` exactly as one
process cuts them, and batch i goes to rank i mod N. A left-padded batch's greedy output can depend on the
batch it is in (its padded length, the kernels picked for its shape), so keeping one process's batches is
what makes N ranks answer exactly as one does (tests/test_eval_ranks.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch.distributed as dist

from mirage_ds.eval.generation import Prompt


class Generates(Protocol):
    batch_size: int

    def generate(self, prompts: list[Prompt]) -> dict[str, str]: ...


@dataclass(frozen=True)
class Ranks:
    """This process's place among the evaluating ranks; rank 0 (the leader) judges and writes."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


def join_ranks() -> Ranks:
    """The launcher's ranks (``RANK`` / ``WORLD_SIZE``; one process without a launcher), joining a process
    group when there are several and none is open yet. Only strings travel between ranks, so gloo serves
    on GPU hosts as well; each rank generates on its own device."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    dist.init_process_group("gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def rank_batches(prompts: list[Prompt], batch_size: int, ranks: Ranks) -> tuple[list[Prompt], int]:
    """(the prompts this rank generates, how many of them are padding), batches in one process's grouping.

    Every rank runs as many batches as rank 0 (which holds the most): a rank short of one first repeats
    batch 0 and throws its answers away. Under ZeRO-3 each forward gathers every layer's weights with a
    collective all ranks must join, so all ranks must call ``generate`` equally often; elsewhere the extra
    batch only fills time a rank would spend waiting for rank 0. Padding goes first: batch 0 is a full batch
    (unless it is the only one), so the rank's own batches keep their grouping behind it.
    """
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    mine = batches[ranks.rank :: ranks.world]
    most = -(-len(batches) // ranks.world)
    padding = batches[:1] * (most - len(mine))
    return [p for batch in padding + mine for p in batch], sum(len(b) for b in padding)


def generate_across(generator: Generates, prompts: list[Prompt], ranks: Ranks) -> dict[str, str]:
    """Every response by key, in prompt order, on rank 0; an empty dict on the other ranks.

    All ranks call this with the same ``prompts`` (built the same way on each); give the generator a
    progress bar on rank 0 only.
    """
    if ranks.world == 1:
        return generator.generate(prompts)
    share, padding = rank_batches(prompts, generator.batch_size, ranks)
    answers = generator.generate(share) if share else {}
    mine = {p.key: answers[p.key] for p in share[padding:]}
    gathered: list[dict[str, str] | None] | None = [None] * ranks.world if ranks.leader else None
    dist.gather_object(mine, gathered, dst=0)
    if not ranks.leader:
        return {}
    merged = {key: text for part in gathered or [] for key, text in (part or {}).items()}
    return {p.key: merged[p.key] for p in prompts}
