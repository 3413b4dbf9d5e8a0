"""mirage_ds/atomic.py, the one module that puts files and directories in place: a reader sees the complete old
or the complete new, a failed or killed write leaves the old one, and what is written gets the permissions a
plain ``open`` / ``mkdir`` gives (not the 0600 / 0700 of the temporary names)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mirage_ds.atomic import atomic_dir, write_bytes, write_json, write_text


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_write_replaces_the_whole_file_with_plain_permissions_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "record.json"
    write_json(path, {"a": 1})
    write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]
    (tmp_path / "plain.json").write_text("{}")
    assert _mode(path) == _mode(tmp_path / "plain.json")


def test_a_failed_write_leaves_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_text(path, "old\n")
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})
    with pytest.raises(TypeError):  # raised by the write into the temporary file, which is removed
        write_bytes(path, "text is not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_atomic_dir_refuses_an_existing_directory_unless_overwrite(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
    (tmp_path / "plain").mkdir()
    assert _mode(final) == _mode(tmp_path / "plain")
    (tmp_path / "plain").rmdir()
    with pytest.raises(FileExistsError, match=f"{final} already exists"):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("second")
    with pytest.raises(RuntimeError, match="broke"):
        with atomic_dir(final, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("broke")
    assert (final / "a.txt").read_text() == "first"
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither the temporary nor the old one is left


def test_a_write_killed_midway_leaves_the_complete_old_directory(tmp_path: Path) -> None:
    """kill -9 while the new directory is being filled: ``final`` is the old one, whole."""
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        for i in range(3):
            (tmp / f"{i}.txt").write_text(f"old {i}")
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from mirage_ds.atomic import atomic_dir
        with atomic_dir(Path({str(final)!r}), overwrite=True) as tmp:
            (tmp / "0.txt").write_text("new 0")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: p.read_text() for p in final.iterdir()} == {f"{i}.txt": f"old {i}" for i in range(3)}
    leftover = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert len(leftover) == 1 and leftover[0].startswith(".out.tmp-"), leftover  # hidden, never read as data
    assert os.listdir(tmp_path / leftover[0]) == ["0.txt"]
