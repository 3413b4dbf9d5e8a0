"""A real `mlflow server` on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def start_server(port: int, store: Path) -> subprocess.Popen:
    cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--default-artifact-root", str(store / "artifacts")]
    log = open(store / f"server-{port}-{time.time():.0f}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log.name}")
    stop_server(proc)
    raise RuntimeError("mlflow server did not become healthy in 120 s")


def stop_server(proc: subprocess.Popen, crash: bool = False) -> None:
    """SIGTERM (a clean shutdown) or, with ``crash``, SIGKILL: the server is gone at once."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
