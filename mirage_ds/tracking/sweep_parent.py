"""The MLflow parent run of a sweep, created once before its array tasks start.

``slurm/submit`` creates it (and with it the store and the experiment) before ``sbatch``, and records it in
``<sweep dir>/mlflow_parent.json``; every array task reads that record (slurm/sweep.sh exports the id as
``MIRAGE_SWEEP_PARENT``) and becomes its child. Tasks that start together therefore never race to create
the store, the experiment or the parent. An array submitted by hand (``sbatch slurm/sweep.sh``) creates it
in whichever task gets there first: a file lock beside the record keeps that to one creator, which holds
across nodes only where the shared filesystem honours ``flock`` (slurm/submit needs no lock at all).
"""

from __future__ import annotations

from pathlib import Path

from mirage_ds.cache import build_lock
from mirage_ds.tracking.store import ensure_experiment, open_client, read_record, store_uri, write_record

PARENT_FILE = "mlflow_parent.json"


def sweep_parent(sweep_dir: Path, sweep: str, experiment: str) -> str:
    """The run id of sweep ``sweep``'s parent in the current store: the one recorded in ``sweep_dir``, else
    a new one (tagged ``mirage.sweep_parent``), recorded there. A resubmitted sweep keeps its parent."""
    uri, record = store_uri(), Path(sweep_dir) / PARENT_FILE
    with build_lock(record):
        saved = read_record(record)
        if saved is not None and saved["tracking_uri"] == uri:
            return saved["run_id"]
        client = open_client(uri)
        experiment_id = ensure_experiment(client, experiment)
        tags = {"mirage.sweep_parent": sweep, "mirage.output_dir": str(Path(sweep_dir).resolve())}
        run_id = client.create_run(experiment_id, run_name=f"sweep:{sweep}", tags=tags).info.run_id
        write_record(record, uri, run_id, experiment_id)
    return run_id
