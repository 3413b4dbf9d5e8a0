"""The tracker seam: the training loop talks to a ``Tracker``; rank 0 gets a real one, other ranks a null one.

``metrics.jsonl`` in ``output_dir`` is always written (it is the local record that survives a tracking
server outage); the MLflow tracker (``mlflow_run.py``) is added beside it by ``build_tracker``.

A resumed run first drops the rows after its checkpoint (``truncate_metrics``: those steps are trained
again, exactly, and logged again), so ``metrics.jsonl`` holds one row per step. The MLflow run cannot drop
values, so it is made to hold one value per step another way: the resumed tracker delivers the kept rows it
lacks (a kill -9 loses the queue's last seconds) and never sends a (metric, step) it already holds (see
``MlflowTracker``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mirage_ds.atomic import write_text

if TYPE_CHECKING:
    from mirage_ds.config import TrainConfig

METRICS_FILE = "metrics.jsonl"


class Tracker(Protocol):
    """What the training loop logs through; ``sync`` makes what was logged durable (before a checkpoint: a
    checkpoint must not outlive the rows of the steps it holds); ``close`` marks the run's end status
    (FINISHED, FAILED, KILLED)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def sync(self) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Non-zero ranks: every call is a no-op, so the loop never branches on rank to log."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class JsonlTracker:
    """Appends one JSON object per logged step to ``output_dir/metrics.jsonl`` (flushed each line, so a killed
    process loses none; fsynced by ``sync``, not per line: an fsync costs milliseconds, a small step little more)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log_params(self, params: dict[str, Any]) -> None:
        pass  # the resolved config is saved as config.yaml by the launcher

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self, status: str = "FINISHED") -> None:
        self.sync()
        self._file.close()


class MultiTracker:
    """Every call goes to each tracker in turn (metrics.jsonl first, so the local record is written first)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def log_params(self, params: dict[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        for t in self.trackers:
            t.log_artifact(path, artifact_path)

    def sync(self) -> None:
        for t in self.trackers:
            t.sync()

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status)


def build_tracker(cfg: TrainConfig, rank: int) -> Tracker:
    """Rank 0: metrics.jsonl (always) and MLflow (unless tracking.mlflow=false). Other ranks: nothing."""
    if rank != 0:
        return NullTracker()
    trackers: list[Tracker] = [JsonlTracker(Path(cfg.output_dir))]
    if cfg.tracking.mlflow:
        # Imported here: MLflow takes seconds to import and runs that do not track should not pay for it.
        from mirage_ds.tracking.mlflow_run import MlflowTracker
        from mirage_ds.tracking.store import experiment_name, store_uri

        run_name = f"{cfg.recipe}:{Path(cfg.output_dir).name}"
        trackers.append(MlflowTracker(Path(cfg.output_dir), store_uri(), run_name, experiment_name(cfg.tracking.experiment),
                                      cfg.tracking.retry_s, history=read_metrics(Path(cfg.output_dir))))
    return MultiTracker(trackers)


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``output_dir/metrics.jsonl`` ({"step": N, metric: value, ...}; a non-finite value is None)."""
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def truncate_metrics(output_dir: Path, last_step: int) -> None:
    """On resume, drop rows logged after the checkpoint: those steps are about to be trained again."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    write_text(path, "".join(line + "\n" for line in kept))


def system_metrics() -> dict[str, float]:
    """Process and machine load, logged with each step through the same queue as every other metric
    (so a tracking-server outage loses none of it)."""
    import psutil
    import torch

    process = psutil.Process()
    out = {
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/rss_gib": process.memory_info().rss / 2**30,
        "system/memory_percent": psutil.virtual_memory().percent,
    }
    if torch.cuda.is_available():
        out["system/gpu_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out
