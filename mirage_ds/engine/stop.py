"""The stop request: SIGUSR1 (Slurm's ``--signal``), SIGTERM or SIGINT (Ctrl-C) asks the run to checkpoint and
exit 3 (``resume=auto`` continues it).

Kept free of heavy imports so the launcher installs the handler first thing: a signal that arrives while
torch and DeepSpeed are still importing must not kill the rank.

Ctrl-C under the ``deepspeed`` launcher reaches every rank twice: SIGINT from the terminal, then SIGTERM
from the launcher, which waits 30 s for its ranks before it kills them (a step and a checkpoint that take
longer end as a kill: the previous checkpoint stays ``latest``).
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Records the request; the loop acts on it at the end of the current step, on every rank at once."""

    def __init__(self) -> None:
        self.raised = False
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = True
