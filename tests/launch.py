"""Run the real DeepSpeed launcher from tests: every command here starts from the untrained tiny model
(``UNTRAINED`` before the test's own overrides, which may set it back)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, UNTRAINED
from mirage_ds.ports import free_port  # the tests take it from here: from launch import free_port

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def recipe_args(recipe: str, overrides: tuple[str, ...]) -> list[str]:
    """``--recipe NAME``, the launcher's flags (``--paper-scale``), then ``UNTRAINED`` and the overrides: the
    launcher takes its ``key=value`` overrides as one positional run, so none may come before a flag."""
    flags = [o for o in overrides if o.startswith("--")]
    return ["--recipe", recipe, *flags, UNTRAINED, *(o for o in overrides if not o.startswith("--"))]


def launch(recipe: str, *overrides: str, ranks: int = 2, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "launcher/run.py",
           *recipe_args(recipe, overrides)]
    return subprocess.run(cmd, cwd=REPO, env=env if env is not None else {**os.environ}, capture_output=True, text=True, timeout=timeout)


def run_one_rank(recipe: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """A world of one: ``launcher/run.py`` as plain python, without the DeepSpeed launcher process."""
    cmd = [sys.executable, "launcher/run.py", *recipe_args(recipe, overrides)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def launch_and_preempt(recipe: str, out: Path, after_step: int, *overrides: str, ranks: int = 2,
                       signals: tuple[int, ...] = (signal.SIGUSR1,)) -> subprocess.CompletedProcess:
    """Start a run, signal its ranks once ``after_step`` steps are logged (the first of ``signals`` to one rank,
    the next to the next, cycling), wait for it to exit."""
    cmd = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "launcher/run.py",
           *recipe_args(recipe, (f"output_dir={out}", *overrides))]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= after_step:
            for pid, sig in zip(_rank_pids(proc.pid), itertools.cycle(signals)):
                os.kill(pid, sig)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _rank_pids(launcher_pid: int) -> list[int]:
    """The rank processes are the launcher's descendants running launcher/run.py."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text().split()
        except OSError:
            continue
        if "launcher/run.py" in cmdline and "--local_rank" in cmdline and os.getsid(int(entry.name)) == os.getsid(launcher_pid):
            pids.append(int(entry.name))
    return pids


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
