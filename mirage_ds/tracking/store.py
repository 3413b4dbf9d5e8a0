"""Where runs are tracked: one store URI for training, eval, sweeps and ``mirage-ds compare``, and a sqlite
store that is never seen half-created.

The store is ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/runs/mlflow.db``: ``runs/`` under the
directory commands are started from (the repository root for ``make`` and ``slurm/``), beside the run
directories that ``make run``, ``make demo`` and sweeps write. MLflow >= 3.7 refuses the ``./mlruns`` file
store by default, hence sqlite.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from mirage_ds.atomic import publish_file, write_json
from mirage_ds.cache import build_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "mirage-ds"
SQLITE = "sqlite:///"


def store_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the sqlite store ``runs/mlflow.db`` under the working directory; a sqlite
    path is made absolute against the working directory (``sqlite:///runs/x.db`` too), so the URI a process
    hands on names the same store wherever it is read (the children of ``mirage-ds reproduce`` and ``train``
    start in their caller's directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE}runs/mlflow.db"
    path = sqlite_path(uri)
    return uri if path is None else f"{SQLITE}{path.absolute()}"


def experiment_name(configured: str | None = None) -> str:
    """The recipe's ``tracking.experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``mirage-ds``."""
    return configured or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside it (``mlartifacts/``), not into ``./mlruns`` of whatever cwd."""
    path = sqlite_path(uri)
    return None if path is None else (path.parent / "mlartifacts").resolve().as_uri()


class StoreError(RuntimeError):
    """A sqlite store that cannot be used as it is; the message names the file and what to do."""


def open_client(uri: str) -> MlflowClient:
    """A client for ``uri``; a sqlite store is made complete first (see ``ensure_sqlite_store``)."""
    # Imported here: MLflow takes seconds to import, and store_uri() callers (sweep scripts) need none of it.
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is not None:
        ensure_sqlite_store(path)
    return MlflowClient(tracking_uri=uri)


def _store_state(path: Path) -> str:
    """``complete``; ``absent`` (no file, or an empty one); ``half`` (MLflow's tables begun but no experiment
    row: MLflow adds the Default experiment after its last migration, so its creation was cut short, and
    without an experiment there is no run); ``foreign`` (not a database, or someone else's)."""
    if not path.is_file() or path.stat().st_size == 0:
        return "absent"
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "experiments" in tables and db.execute("SELECT 1 FROM experiments LIMIT 1").fetchone():
                return "complete"
            if "runs" in tables and db.execute("SELECT 1 FROM runs LIMIT 1").fetchone():
                return "foreign"
    except sqlite3.DatabaseError:
        return "foreign"
    return "half" if not tables or tables & {"experiments", "alembic_version"} else "foreign"


def ensure_sqlite_store(path: Path) -> None:
    """Create the sqlite store at ``path`` unless it is complete; replace one that was half-created.

    MLflow creates its ~60 tables in place over seconds, outside one transaction: a process killed in
    between leaves a store that later opens can fail on ("table ... already exists"). So the store is built
    under a temporary name and renamed into place, and ``path`` is either absent or complete. A half-made
    store found there (from a killed MLflow process) holds no runs and is replaced, with a warning; a file
    that is not an MLflow store is left alone and reported (``StoreError``).
    """
    if _store_state(path) == "complete":
        return
    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    # One creator at a time on this host; the others wait, then find the store complete.
    with build_lock(path):
        state = _store_state(path)
        if state == "complete":
            return
        if state == "foreign":
            raise StoreError(f"{path} is not an MLflow store that can be opened: move it aside, or set "
                             "MLFLOW_TRACKING_URI to another store")
        if state == "half":
            log.warning("MLflow store %s was half-created (a process was killed while creating its tables); "
                        "it holds no runs and is created again", path)
        building = path.with_name(f".{path.name}.creating")
        building.unlink(missing_ok=True)  # left by a creator that was killed: the lock says it is gone
        MlflowClient(tracking_uri=f"{SQLITE}{building}").search_experiments(max_results=1)
        if _store_state(building) != "complete":
            raise StoreError(f"MLflow did not finish creating {building}: remove it and retry")
        publish_file(building, path)


def read_record(path: Path) -> dict[str, str] | None:
    """A run record (``mlflow_run.json``, ``mlflow_parent.json``): tracking_uri, run_id, experiment_id."""
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(path: Path, uri: str, run_id: str, experiment_id: str) -> None:
    """Written atomically (``mirage_ds.atomic``): a reader never sees half a record."""
    write_json(path, {"tracking_uri": uri, "run_id": run_id, "experiment_id": experiment_id}, indent=None)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite store) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri))
