"""Fault injection: the one seam through which tests break a run on purpose (tests/test_faults.py).

``Faults.from_env(rank)`` reads the variables below once, when the run is built; the loop and the checkpoint
code only call its methods, which do nothing unless a variable asked for a fault:

- ``MIRAGE_NAN_AT_STEP=N[,M...]``: at those steps rank 0's loss is NaN while its gradients stay finite (a
  NaN constant term: only the check on the reduced loss catches it).
- ``MIRAGE_NAN_GRAD_AT_STEP=N[,M...]``: at those steps rank 0's loss stays finite while every gradient is
  NaN (only DeepSpeed's gradient-norm check catches it).
- ``MIRAGE_CRASH_IN_SAVE=N``: every rank SIGKILLs itself after DeepSpeed wrote the partial step-N checkpoint
  and before it becomes visible.

The non-finite faults hit rank 0 only: the other ranks stay finite, so every rank must act on the reduced
values, not its own.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import torch

NAN_AT_STEP = "MIRAGE_NAN_AT_STEP"
NAN_GRAD_AT_STEP = "MIRAGE_NAN_GRAD_AT_STEP"
CRASH_IN_SAVE = "MIRAGE_CRASH_IN_SAVE"


def _steps(value: str) -> frozenset[int]:
    return frozenset(int(part) for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Faults:
    """The faults this rank injects; ``Faults()`` injects none."""

    nan_loss_at: frozenset[int] = frozenset()
    nan_grad_at: frozenset[int] = frozenset()
    crash_in_save_at: int | None = None

    @classmethod
    def from_env(cls, rank: int, env: Mapping[str, str] = os.environ) -> Faults:
        crash = env.get(CRASH_IN_SAVE, "").strip()
        on_rank0 = rank == 0
        return cls(nan_loss_at=_steps(env.get(NAN_AT_STEP, "")) if on_rank0 else frozenset(),
                   nan_grad_at=_steps(env.get(NAN_GRAD_AT_STEP, "")) if on_rank0 else frozenset(),
                   crash_in_save_at=int(crash) if crash else None)

    def poison_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` at optimizer step ``step`` (1-based), made NaN, or given NaN gradients, where asked."""
        if step in self.nan_loss_at:
            return loss + math.nan
        if step in self.nan_grad_at:
            # sqrt(|x|) at x = 0: the value 0, the gradient inf * 0 = NaN.
            return loss + (loss - loss.detach()).abs().sqrt()
        return loss

    def in_save(self, step: int) -> None:
        """Called by every rank between writing the partial step-``step`` checkpoint and publishing it."""
        if self.crash_in_save_at == step:
            os.kill(os.getpid(), signal.SIGKILL)
