"""A real single-node Slurm for tests: munged, slurmctld and slurmd on this machine.

``ensure_cluster()`` is idempotent: it installs Slurm when missing (root only, ``.ci/install_slurm.sh``),
writes ``slurm.conf`` under a state directory, starts whichever daemon is not already running and waits
until ``sinfo`` shows the node idle. ``stop_cluster()`` stops what a given ``ensure_cluster`` started.
The ``slurm_cluster`` session fixture does both; the daemons survive a killed test session and the next
session reuses them.

The state directory is ``$MIRAGE_SLURM_DIR`` or ``<tmp>/mirage-slurm``. Clients find the cluster through
``SLURM_CONF`` (``Cluster.env``); ``sbatch`` exports it into the jobs, so ``scontrol``/``srun`` work there.

By hand: ``python tests/slurm_cluster.py up`` prints ``export SLURM_CONF=...``; ``... down`` stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALLER = REPO / ".ci" / "install_slurm.sh"
NOT_ROOT = "Slurm cannot be installed (not root)"


@dataclass
class Cluster:
    root: Path
    node: str
    # Daemons this ensure_cluster() call started (name -> pid file); stop_cluster stops only these.
    started: dict[str, Path] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm clients (and, through sbatch's export, for the jobs)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60)


def state_dir() -> Path:
    return Path(os.environ.get("MIRAGE_SLURM_DIR", Path(tempfile.gettempdir()) / "mirage-slurm"))


def slurm_conf(root: Path, node: str, cpus: int) -> str:
    """design.md "Slurm": linuxproc tracking and no task plugin, so no cgroups are needed in a container."""
    return "\n".join([
        "ClusterName=mirage",
        f"SlurmctldHost={node}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "SlurmctldPort=6817",
        "SlurmdPort=6818",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        # CPUs are the only consumable: jobs that ask for no memory do not each claim the whole node.
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "JobCompType=jobcomp/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        # A node whose slurmd restarts (a new test session) comes back by itself instead of staying DOWN.
        "ReturnToService=2",
        "SchedulerParameters=sched_interval=1",
        "JobRequeue=1",
        "KillWait=10",
        "MinJobAge=600",
        f"NodeName={node} CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _munge_ok() -> bool:
    encode = subprocess.run(["munge", "-n"], capture_output=True)
    if encode.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encode.stdout, capture_output=True).returncode == 0


def _wait(predicate: Callable[[], bool], what: str, log: Path | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log is not None and log.is_file() else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _install() -> None:
    if all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in ("slurmctld", "slurmd", "sbatch", "munged", "pgrep")):
        return
    subprocess.run(["bash", str(INSTALLER)], check=True, capture_output=True, text=True, timeout=900)


def _start_munged(cluster: Cluster) -> None:
    if _munge_ok():
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    # munged refuses to run as root; it daemonizes and writes its own pid file.
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True, text=True)
    _wait(_munge_ok, "munged")
    cluster.started["munged"] = run_dir / "munged.pid"


def _node_state(cluster: Cluster) -> str:
    result = cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%T", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def ensure_cluster() -> Cluster:
    """Bring the single-node cluster up (or find it up). Raises if it cannot be started."""
    _install()
    node = socket.gethostname().split(".")[0]
    cluster = Cluster(state_dir(), node)
    for sub in ("state", "spool"):
        (cluster.root / sub).mkdir(parents=True, exist_ok=True)
    _start_munged(cluster)

    text = slurm_conf(cluster.root, node, os.cpu_count() or 1)
    ctld_pid, d_pid = cluster.root / "slurmctld.pid", cluster.root / "slurmd.pid"
    if cluster.conf.is_file() and cluster.conf.read_text() != text:
        # A changed config (another machine size, a new option) needs fresh daemons.
        _stop_daemon(d_pid)
        _stop_daemon(ctld_pid)
    cluster.conf.write_text(text)

    for name, pid_file, log in (("slurmctld", ctld_pid, "slurmctld.log"), ("slurmd", d_pid, "slurmd.log")):
        if _alive(pid_file):
            continue
        subprocess.run([name, "-f", str(cluster.conf)], env=cluster.env, check=True, capture_output=True, text=True)
        _wait(lambda p=pid_file: _alive(p), name, cluster.root / log)
        cluster.started[name] = pid_file

    def idle() -> bool:
        state = _node_state(cluster)
        if state.startswith(("down", "drain")):
            cluster.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        return state.rstrip("*~#") in {"idle", "mixed", "allocated"}

    _wait(idle, f"node {node} to be up in sinfo", cluster.root / "slurmd.log")
    return cluster


def _stop_daemon(pid_file: Path) -> None:
    if not _alive(pid_file):
        return
    pid = int(pid_file.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def stop_cluster(cluster: Cluster) -> None:
    """Stop the daemons this cluster object started, slurmd first (it reports to slurmctld)."""
    for name in ("slurmd", "slurmctld", "munged"):
        if name in cluster.started:
            _stop_daemon(cluster.started[name])


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    cluster = ensure_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in {"up", "down"}:
        sys.exit("usage: python tests/slurm_cluster.py up|down")
    if sys.argv[1] == "up":
        print(f"export SLURM_CONF={ensure_cluster().conf}")
    else:
        up = Cluster(state_dir(), socket.gethostname().split(".")[0])
        stop_cluster(Cluster(up.root, up.node, {n: up.root / f"{n}.pid" for n in ("slurmd", "slurmctld")}))
