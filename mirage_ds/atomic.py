"""Atomic, durable writes: the one module that puts a file or a directory in place (standard library only).

What it guarantees, on one local POSIX file system (rename(2) within a directory):

- ``write_bytes`` / ``write_text`` / ``write_json``: a reader of ``path`` sees the complete old content or
  the complete new content, never a mix or a prefix. The data is written to a unique temporary file in the
  same directory, fsynced, renamed over ``path``, and the directory is fsynced: when the call returns, the
  new content survives a crash or power loss. If the call raises, ``path`` is untouched and the temporary
  file is removed.
- ``atomic_dir``: the block fills a fresh temporary directory beside ``final``; only when it succeeds are
  its files fsynced and the directory renamed to ``final``. A reader never sees ``final`` partly written.
  When ``final`` exists and ``overwrite`` is true, the old directory is first renamed aside
  (``.NAME.old-XXXX``), the new one renamed in, and only then the old one deleted: between the two renames
  ``final`` is briefly absent, and a crash there leaves the complete old data under its ``.old-`` name,
  never half of either. Without ``overwrite`` an existing ``final`` is a ``FileExistsError`` before any
  work. If the block raises, the temporary directory is removed and ``final`` is untouched.
- ``publish_dir`` / ``publish_file``: the last step of ``atomic_dir`` / ``write_bytes``, for a directory or a
  file some other code filled under a temporary name (a checkpoint, a database): fsync it, then rename it
  into place as above.

Files and directories get the permissions a plain ``open`` / ``mkdir`` would give (0666 / 0777 less the
umask), not the 0600 / 0700 of the temporary names they are made under.

On network file systems (NFS) rename is atomic for other clients only with close-to-open consistency;
durability then depends on the server.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()


def _fsync(path: Path | str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        publish_file(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_file(tmp: Path, path: Path) -> None:
    """fsync the complete file ``tmp`` (some other code wrote it: a database), then rename it over ``path``
    (same directory) and fsync the directory: the last step of ``write_bytes``."""
    _fsync(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before it is renamed into place)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(os.path.join(dirpath, name))
        fsync_dir(Path(dirpath))


@contextmanager
def atomic_dir(final: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``final`` when the block succeeds (module docstring)."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~UMASK)
        yield tmp
        publish_dir(tmp, final, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """fsync the complete directory ``tmp``, then rename it to ``final`` (the last step of ``atomic_dir``)."""
    fsync_tree(tmp)
    old: Path | None = None
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        # rename(2) refuses a non-empty target, so a concurrent writer that won the race is not clobbered.
        os.rename(tmp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
