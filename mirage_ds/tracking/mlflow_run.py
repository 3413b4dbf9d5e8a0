"""One MLflow run, fed through a local queue so that training (and eval) never stops when the store is away.

Everything (params, metrics including system load, tags, artifacts) is queued locally and delivered in
batches. If a delivery fails the work goes on with one warning; the queue is retried every ``retry_s``
seconds and at the end, so nothing is lost while the server is down (``metrics.jsonl`` beside it is the
local record either way).

The run id is written to ``output_dir/mlflow_run.json``: a resumed run continues the same MLflow run, and
``mirage-ds eval`` attaches its results to it through the same queue (``MlflowTracker.attach``). Under a
sweep, ``MIRAGE_SWEEP_PARENT`` (set by slurm/sweep.sh, see ``sweep_parent.py``) makes each task a child of
the sweep's parent run.

One value per step across a crash and ``resume=auto``: MLflow cannot delete a logged value, so the resumed
training tracker never sends a (metric, step) its run already holds. The steps after the checkpoint that the
crashed process delivered keep their first values; the resumed process trains them again exactly (same
data, RNG and weights), so the training values are the same (timings and system load are the first
attempt's; ``metrics.jsonl`` has the replay's). The steps up to the checkpoint that the crash kept from
delivery (up to ``DELIVER_EVERY_S`` of queue) are delivered from ``metrics.jsonl``'s kept rows. A resume
with changed overrides is not a replay: its MLflow values for those steps stay the first attempt's.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from mirage_ds.tracking.store import ensure_experiment, open_client, read_record, write_record

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


DELIVER_EVERY_S = 5.0


class MlflowTracker:
    """The ``Tracker`` that logs to MLflow run ``run_name`` in ``experiment`` at ``uri`` (or to the run
    already recorded in ``output_dir`` for that store). ``ends_run=False`` leaves the run's status alone.

    ``history``: a training run's ``metrics.jsonl`` rows as it starts (on resume, those up to the checkpoint);
    then every (metric, step) is sent at most once to the run: rows it lacks are delivered, values it holds
    are never sent again (module docstring). None (results attached after training) sends everything.
    """

    def __init__(self, output_dir: Path, uri: str, run_name: str, experiment: str, retry_s: float = 15.0,
                 ends_run: bool = True, history: Iterable[dict[str, Any]] | None = None) -> None:
        # Fail fast per request: a dead server must cost seconds per retry window, not minutes per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self.output_dir, self.uri = Path(output_dir), uri
        self.run_name, self.experiment, self.retry_s, self.ends_run = run_name, experiment, retry_s, ends_run
        self._client: MlflowClient | None = None
        self.run_id: str | None = None
        self.params: list[Param] = []
        self.metrics: list[Metric] = []
        self.tags: list[RunTag] = []
        self.artifacts: list[tuple[Path, str | None]] = []
        self._logged_params: set[str] = set()
        self._one_value_per_step = history is not None
        # Under ``history``: each metric's highest step the run held when opened. The queue delivers a metric's
        # steps in order, so the run holds every step of it up to that one (and, after a resume, still does).
        self._held: dict[str, int] = {}
        for row in history or ():
            self._queue_metrics({k: math.nan if v is None else v for k, v in row.items() if k != "step"}, row["step"])
        self._last_attempt = 0.0
        self._warned = False
        self._flush()

    @classmethod
    def attach(cls, output_dir: Path, retry_s: float = 15.0) -> MlflowTracker | None:
        """The training run recorded in ``output_dir``, to add results to; None when it was not tracked."""
        saved = read_record(Path(output_dir) / RUN_FILE)
        if saved is None:
            return None
        return cls(Path(output_dir), saved["tracking_uri"], "", "", retry_s, ends_run=False)

    @property
    def client(self) -> MlflowClient:
        """Created on first use, inside the delivery's error handling: opening a store can fail like any
        other delivery (server down, a sqlite store being created by another process)."""
        if self._client is None:
            self._client = open_client(self.uri)
        return self._client

    # -- Tracker protocol --------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow params are strings of at most 6,000 characters.
        self.params += [Param(k, str(v)[:6000]) for k, v in params.items()]
        self._flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue_metrics(metrics, step)
        # Deliver every DELIVER_EVERY_S, not every step: one log_batch to a sqlite store costs 20-40 ms here,
        # more than a small model's whole step (benchmarks/overhead.py). While the server is away, retry only
        # every retry_s seconds: a step must not wait on the network. close() delivers the rest.
        if time.time() - self._last_attempt >= (self.retry_s if self._warned else DELIVER_EVERY_S):
            self._flush()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))
        self._flush()

    def sync(self) -> None:
        pass  # the queue is delivered on its own schedule; metrics.jsonl is the durable record

    def close(self, status: str = "FINISHED") -> None:
        # Last chance to deliver the queue: keep trying for a while (a server restart takes seconds).
        deadline = time.time() + max(30.0, 3 * self.retry_s)
        while not self._flush() and time.time() < deadline:
            time.sleep(2.0)
        if self._pending():
            log.warning("MLflow unreachable at the end: %d items not delivered (metrics.jsonl has every metric)", self._pending())
            return
        if self.ends_run:
            try:
                self.client.set_terminated(self.run_id, status=status)
            except Exception as err:  # noqa: BLE001 - any transport error means "not delivered"
                log.warning("MLflow: could not mark run %s %s: %s", self.run_id, status, err)

    # -- delivery ----------------------------------------------------------------------------------
    def _queue_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.metrics += [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]

    def _pending(self) -> int:
        return len(self.params) + len(self.metrics) + len(self.tags) + len(self.artifacts)

    def _flush(self) -> bool:
        """Deliver the queue; True when it is empty afterwards. Never raises."""
        self._last_attempt = time.time()
        try:
            if self.run_id is None:
                self.run_id = self._open_run()
            self.params = [p for p in self.params if p.key not in self._logged_params]
            self.metrics = [m for m in self.metrics if m.step > self._held.get(m.key, -1)]
            while self.params or self.metrics or self.tags:
                # log_batch limits: 1,000 metrics, 100 params, 100 tags per call.
                params, metrics, tags = self.params[:100], self.metrics[:1000], self.tags[:100]
                self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
                self._logged_params.update(p.key for p in params)
                del self.params[: len(params)], self.metrics[: len(metrics)], self.tags[: len(tags)]
            while self.artifacts:
                path, artifact_path = self.artifacts[0]
                if path.exists():
                    self.client.log_artifact(self.run_id, str(path), artifact_path)
                self.artifacts.pop(0)
            if self._warned:
                log.warning("MLflow reachable again: queue delivered")
                self._warned = False
            return True
        except Exception as err:  # noqa: BLE001 - training must go on whatever the transport raised
            if not self._warned:
                log.warning("MLflow unreachable at %s (%s); the work goes on, %d items queued locally",
                            self.uri, str(err).splitlines()[0][:300], self._pending())
                self._warned = True
            return False

    def _open_run(self) -> str:
        run_file = self.output_dir / RUN_FILE
        saved = read_record(run_file)
        if saved is not None and saved["tracking_uri"] == self.uri:
            run = self.client.get_run(saved["run_id"])  # raises if the store lost it or is down
            # A resumed run continues its MLflow run. MLflow refuses to change a logged param (and
            # `resume` did change), which would block the whole queue: only params it lacks are sent.
            self._logged_params = set(run.data.params)
            if self._one_value_per_step:
                self._held = {key: max(m.step for m in self.client.get_metric_history(saved["run_id"], key))
                              for key in run.data.metrics}
            return saved["run_id"]
        experiment_id = ensure_experiment(self.client, self.experiment)
        tags = {"mirage.output_dir": str(self.output_dir.resolve())}
        parent = os.environ.get("MIRAGE_SWEEP_PARENT")
        if parent:
            tags["mlflow.parentRunId"] = parent
            tags["mirage.sweep"] = os.environ.get("MIRAGE_SWEEP_NAME", "")
            tags["mirage.sweep_task"] = os.environ.get("MIRAGE_SWEEP_TASK", "")
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        write_record(run_file, self.uri, run.info.run_id, experiment_id)
        return run.info.run_id


def log_results(output_dir: Path, metrics: dict[str, float], artifacts: list[Path], artifact_path: str,
                params: dict[str, str] | None = None) -> bool:
    """Attach results (eval metrics at step 0, files under ``artifact_path``, ``params`` naming what produced
    them) to the training run recorded in ``output_dir``, through the queue; False when that run was not tracked."""
    tracker = MlflowTracker.attach(output_dir)
    if tracker is None:
        return False
    if params:
        tracker.log_params(params)
    tracker.log_metrics(metrics, step=0)
    for path in artifacts:
        tracker.log_artifact(path, artifact_path)
    tracker.close()
    return True
