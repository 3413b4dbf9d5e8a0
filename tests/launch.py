"""Run the real DeepSpeed launcher from tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO
from mirage_ds.ports import free_port  # the tests take it from here: from launch import free_port

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def launch(recipe: str, *overrides: str, ranks: int = 2, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "launcher/run.py", "--recipe", recipe, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env if env is not None else {**os.environ}, capture_output=True, text=True, timeout=timeout)


def run_one_rank(recipe: str, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """A world of one: ``launcher/run.py`` as plain python, without the DeepSpeed launcher process."""
    cmd = [sys.executable, "launcher/run.py", "--recipe", recipe, *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def launch_and_preempt(recipe: str, out: Path, after_step: int, *overrides: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """Start a run, send SIGUSR1 to its ranks once ``after_step`` steps are logged, wait for it to exit."""
    cmd = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "launcher/run.py", "--recipe", recipe,
           f"output_dir={out}", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= after_step:
            for pid in _rank_pids(proc.pid):
                os.kill(pid, signal.SIGUSR1)
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
