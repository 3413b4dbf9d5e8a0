"""MLflow tracking from rank 0, which never stops training when the server is away.

Everything (params, metrics including system load, tags, artifacts) is queued locally and delivered in batches. If a delivery
fails the run goes on with one warning; the queue is retried every ``retry_s`` seconds and at the end, so
nothing is lost while the server is down (``metrics.jsonl`` beside it is the local record either way).

Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<runs dir>/mlflow.db`` (MLflow >= 3.7 refuses the
``./mlruns`` file store by default). The run id is written to ``output_dir/mlflow_run.json`` so that a
resumed run continues the same MLflow run and ``mirage-ds eval`` attaches its results to it. Under a sweep
(``MIRAGE_SWEEP_NAME``) each task is a child of one parent run per sweep (``mlflow.parentRunId``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
DEFAULT_EXPERIMENT = "mirage-ds"


def tracking_uri(output_dir: Path) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    runs_dir = Path(output_dir).resolve().parent
    runs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs_dir / 'mlflow.db'}"


class MlflowTracker:
    def __init__(self, output_dir: Path, run_name: str, experiment: str | None = None, retry_s: float = 15.0) -> None:
        # Fail fast per request: a dead server must cost seconds per retry window, not minutes per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self.output_dir = Path(output_dir)
        self.uri = tracking_uri(self.output_dir)
        self._client: MlflowClient | None = None
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
        self.run_name, self.retry_s = run_name, retry_s
        self.run_id: str | None = None
        self.params: list[Param] = []
        self.metrics: list[Metric] = []
        self.tags: list[RunTag] = []
        self.artifacts: list[tuple[Path, str | None]] = []
        self._logged_params: set[str] = set()
        self._last_attempt = 0.0
        self._warned = False
        self._flush()

    @property
    def client(self) -> MlflowClient:
        """Created on first use, inside the delivery's error handling: building a client can already touch
        the store (a sqlite store creates its tables, which races when sweep tasks start together)."""
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # -- Tracker protocol --------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow params are strings of at most 6,000 characters.
        self.params += [Param(k, str(v)[:6000]) for k, v in params.items()]
        self._flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.metrics += [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        # While the server is away, retry only every retry_s seconds: a step must not wait on the network.
        if not self._warned or time.time() - self._last_attempt >= self.retry_s:
            self._flush()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))
        self._flush()

    def close(self, status: str = "FINISHED") -> None:
        # Last chance to deliver the queue: keep trying for a while (a server restart takes seconds).
        deadline = time.time() + max(30.0, 3 * self.retry_s)
        while not self._flush() and time.time() < deadline:
            time.sleep(2.0)
        if self.run_id is not None and self._pending() == 0:
            try:
                self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as err:  # noqa: BLE001 - any transport error means "not delivered"
                log.warning("MLflow: could not mark run %s %s: %s", self.run_id, status, err)
        if self._pending():
            log.warning("MLflow unreachable at the end: %d items not delivered (metrics.jsonl has every metric)", self._pending())

    # -- delivery ----------------------------------------------------------------------------------
    def _pending(self) -> int:
        return len(self.params) + len(self.metrics) + len(self.tags) + len(self.artifacts)

    def _flush(self) -> bool:
        """Deliver the queue; True when it is empty afterwards. Never raises."""
        self._last_attempt = time.time()
        try:
            if self.run_id is None:
                self.run_id = self._open_run()
            self.params = [p for p in self.params if p.key not in self._logged_params]
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
                log.warning("MLflow unreachable (%s); training goes on, %d items queued locally", str(err).splitlines()[0][:200], self._pending())
                self._warned = True
            return False

    def _open_run(self) -> str:
        run_file = self.output_dir / RUN_FILE
        if run_file.is_file():
            saved = json.loads(run_file.read_text())
            if saved.get("tracking_uri") == self.uri:
                run = self.client.get_run(saved["run_id"])  # raises if the store lost it or is down
                # A resumed run continues its MLflow run. MLflow refuses to change a logged param (and
                # `resume` did change), which would block the whole queue: only params it lacks are sent.
                self._logged_params = set(run.data.params)
                return saved["run_id"]
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # With the default sqlite store, artifacts go beside it, not into ./mlruns of whatever cwd.
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        tags = {"mirage.output_dir": str(self.output_dir.resolve())}
        sweep = os.environ.get("MIRAGE_SWEEP_NAME")
        if sweep:
            tags["mlflow.parentRunId"] = self._sweep_parent(experiment_id, sweep)
            tags["mirage.sweep"] = sweep
            tags["mirage.sweep_task"] = os.environ.get("MIRAGE_SWEEP_TASK", "")
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_file.with_name(f".{RUN_FILE}.tmp")
        tmp.write_text(json.dumps({"tracking_uri": self.uri, "run_id": run.info.run_id, "experiment_id": experiment_id}))
        tmp.replace(run_file)
        return run.info.run_id

    def _sweep_parent(self, experiment_id: str, sweep: str) -> str:
        """One parent run per sweep name, found by tag (created by the first task that gets here)."""
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`mirage.sweep_parent` = '{sweep}'", max_results=1)
        if found:
            return found[0].info.run_id
        return self.client.create_run(experiment_id, run_name=f"sweep:{sweep}", tags={"mirage.sweep_parent": sweep}).info.run_id


def attached_run(output_dir: Path) -> tuple[MlflowClient, str] | None:
    """(client, run id) of the training run recorded in ``output_dir``, if it was tracked."""
    run_file = Path(output_dir) / RUN_FILE
    if not run_file.is_file():
        return None
    saved = json.loads(run_file.read_text())
    return MlflowClient(tracking_uri=saved["tracking_uri"]), saved["run_id"]
