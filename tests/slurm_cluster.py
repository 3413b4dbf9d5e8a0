"""A real Slurm on this machine for tests: munged, slurmctld and slurmd.

``ensure_cluster()`` is idempotent: it installs Slurm when missing (root only, ``.ci/install_slurm.sh``),
writes ``slurm.conf`` under a state directory, starts whichever daemon is not already running and waits
until ``sinfo`` shows the nodes up. ``stop_cluster()`` stops what that call started. The daemons survive
a killed test session; the next session finds and reuses them.

Two shapes, each with its own state directory and ports, so both can be up at once:

- ``ensure_cluster()``: the single node of docs/architecture.md ("The test Slurm cluster"),
  ``NodeName=$(hostname) CPUs=$(nproc)``.
- ``ensure_cluster(nodes=2)``: two nodes ``n0`` and ``n1`` of one CPU each, two slurmd processes on this
  machine (``slurmd -N``) reached at 127.0.0.1. A multi-node job array then really runs ``srun`` across
  two nodes, which is the path slurm/sweep.sh takes on a real cluster.

State lives in ``$MIRAGE_SLURM_DIR`` (default ``<tmp>/mirage-slurm``; the two-node shape adds ``-2n``).
Clients find a cluster through ``SLURM_CONF`` (``Cluster.env``); sbatch exports it into the jobs.

By hand: ``python tests/slurm_cluster.py up [2]`` prints ``export SLURM_CONF=...``; ``down [2]`` stops it.
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
# Set by .ci/run: there a Slurm test that cannot get its cluster fails instead of skipping, so a CI
# without root cannot pass without them. Locally the skip stays, with its reason.
REQUIRE_SLURM = "MIRAGE_REQUIRE_SLURM"


@dataclass
class Cluster:
    root: Path
    nodes: list[str]
    # Daemons this ensure_cluster() call started, as pid files; stop_cluster stops only these.
    started: list[Path] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm clients (and, through sbatch's export, for the jobs)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60)


def _host() -> str:
    return socket.gethostname().split(".")[0]


def cluster_for(nodes: int) -> Cluster:
    base = Path(os.environ.get("MIRAGE_SLURM_DIR", Path(tempfile.gettempdir()) / "mirage-slurm"))
    if nodes == 1:
        return Cluster(base, [_host()])
    return Cluster(base.with_name(f"{base.name}-{nodes}n"), [f"n{i}" for i in range(nodes)])


def slurm_conf(cluster: Cluster) -> str:
    """docs/architecture.md, "The test Slurm cluster": linuxproc tracking, no task plugin, so no cgroups needed."""
    root, single = cluster.root, len(cluster.nodes) == 1
    # Each shape gets its own port block so the single-node and the two-node cluster can run side by side.
    port = 6817 if single else 6827
    if single:
        node_lines = [f"NodeName={cluster.nodes[0]} CPUs={os.cpu_count() or 1} State=UNKNOWN"]
    else:
        # Several slurmd on one host: each needs its own port, spool and pid file (%n = node name).
        node_lines = [f"NodeName={name} NodeHostname={_host()} NodeAddr=127.0.0.1 Port={port + 1 + i} CPUs=1 State=UNKNOWN"
                      for i, name in enumerate(cluster.nodes)]
    return "\n".join([
        f"ClusterName=mirage{len(cluster.nodes)}n",
        f"SlurmctldHost={_host()}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        # A requeued job waits out its revoked credential before it may start again (120 s by default);
        # 10 s keeps the preemption tests short. Starting it earlier (scontrol update StartTime=now)
        # fails the new attempt at once ("Job credential revoked").
        "AuthInfo=cred_expire=10",
        f"SlurmctldPort={port}",
        f"SlurmdPort={port + 1}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        # CPUs are the only consumable: jobs that ask for no memory do not each claim a whole node.
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
        # Finished jobs stay visible to `scontrol show job` for 10 min: tests read their states there.
        "MinJobAge=600",
        *node_lines,
        f"PartitionName=debug Nodes={','.join(cluster.nodes)} Default=YES MaxTime=INFINITE State=UP",
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
    tools = ("slurmctld", "slurmd", "sbatch", "munged", "pgrep")
    if all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in tools):
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
    cluster.started.append(run_dir / "munged.pid")


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


def ensure_cluster(nodes: int = 1) -> Cluster:
    """Bring the cluster up (or find it up). Raises if it cannot be started."""
    _install()
    cluster = cluster_for(nodes)
    _start_munged(cluster)

    text = slurm_conf(cluster)
    daemons = [(cluster.root / "slurmctld.pid", ["slurmctld"], cluster.root / "slurmctld.log")]
    daemons += [(cluster.root / f"slurmd-{name}.pid", ["slurmd", "-N", name], cluster.root / f"slurmd-{name}.log")
                for name in cluster.nodes]
    if cluster.conf.is_file() and cluster.conf.read_text() != text:
        # A changed config (another machine size, a new option) needs fresh daemons, and fresh state:
        # slurmctld refuses state saved under another cluster name.
        for pid_file, _, _ in reversed(daemons):
            _stop_daemon(pid_file)
        for sub in ("state", "spool"):
            shutil.rmtree(cluster.root / sub, ignore_errors=True)
    for name in cluster.nodes:
        (cluster.root / "spool" / name).mkdir(parents=True, exist_ok=True)
    (cluster.root / "state").mkdir(parents=True, exist_ok=True)
    cluster.conf.write_text(text)

    for pid_file, cmd, log in daemons:
        if _alive(pid_file):
            continue
        # Each daemon forks into the background and writes its pid file once it is running.
        started = subprocess.run([*cmd, "-f", str(cluster.conf)], env=cluster.env, capture_output=True, text=True)
        if started.returncode != 0:
            tail = log.read_text()[-2000:] if log.is_file() else started.stderr
            raise RuntimeError(f"{' '.join(cmd)} failed to start (exit {started.returncode}):\n{tail}")
        _wait(lambda p=pid_file: _alive(p), cmd[0], log)
        cluster.started.append(pid_file)

    def up() -> bool:
        result = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        for name, state in states.items():
            if state.startswith(("down", "drain")):
                cluster.run("scontrol", "update", f"nodename={name}", "state=resume", check=False)
        return sorted(states) == sorted(cluster.nodes) and all(
            s.rstrip("*~#") in {"idle", "mixed", "allocated"} for s in states.values())

    _wait(up, f"nodes {cluster.nodes} to be up in sinfo", cluster.root / "slurmctld.log")
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """Stop the daemons this cluster object started, slurmd before slurmctld, munged last."""
    for pid_file in reversed(cluster.started):
        _stop_daemon(pid_file)


def _session_cluster(nodes: int) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        if os.environ.get(REQUIRE_SLURM) == "1":
            pytest.fail(f"{NOT_ROOT} and {REQUIRE_SLURM}=1: the Slurm tests must run here (run the CI as root)")
        pytest.skip(NOT_ROOT)
    cluster = ensure_cluster(nodes)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """The single-node cluster of docs/architecture.md ("The test Slurm cluster")."""
    yield from _session_cluster(1)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[Cluster]:
    """Two one-CPU nodes on this machine, for srun across nodes."""
    yield from _session_cluster(2)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in {"up", "down"}:
        sys.exit("usage: python tests/slurm_cluster.py up|down [NODES]")
    count = int(sys.argv[2]) if len(sys.argv) == 3 else 1
    if sys.argv[1] == "up":
        print(f"export SLURM_CONF={ensure_cluster(count).conf}")
    else:
        found = cluster_for(count)
        found.started = [found.root / "slurmctld.pid"] + [found.root / f"slurmd-{n}.pid" for n in found.nodes]
        stop_cluster(found)
