"""Where built artefacts are cached (the embedded tiny model, the synthetic corpus) and the lock that
lets one process build an artefact while the others wait.

Standard library only: the data side takes the lock without importing torch or transformers.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """``$MIRAGE_CACHE``, else ``~/.cache/mirage-ds``."""
    return Path(os.environ.get("MIRAGE_CACHE", Path.home() / ".cache" / "mirage-ds"))


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Cross-process lock on ``<path>.lock``, so that one rank builds ``path`` while the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
