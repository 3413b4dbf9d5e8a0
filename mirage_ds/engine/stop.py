"""The stop request: SIGUSR1 (Slurm's ``--signal``) or SIGTERM asks the run to checkpoint and exit 3.

Kept free of heavy imports so the launcher installs the handler first thing: a signal that arrives while
torch and DeepSpeed are still importing must not kill the rank.
"""

from __future__ import annotations

import signal


class StopSignal:
    """Records the request; the loop acts on it at the end of the current step, on every rank at once."""

    def __init__(self) -> None:
        self.raised = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = True
