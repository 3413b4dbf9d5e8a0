"""Tracking: ``metrics.jsonl`` beside every run and MLflow through a local queue.

- ``trackers.py``: the ``Tracker`` the training loop logs through (jsonl, multi, null), ``build_tracker``.
- ``store.py``: the one store URI (``store_uri``) that training, eval, sweeps and compare share, and a
  sqlite store that is never seen half-created.
- ``mlflow_run.py``: the queued MLflow tracker; eval results attach to the training run through it.
- ``sweep_parent.py``: a sweep's parent run, created once before its tasks.
- ``versions.py``: the library versions recorded in every run's params.

Only this package opens MLflow (lazily: importing ``mirage_ds.tracking`` does not import it); it imports
nothing of the project but ``mirage_ds.cache``, ``mirage_ds.atomic``, and ``mirage_ds.config`` for one annotation. The Table 1
comparison that reads the store back is ``eval/comparison.py``.
"""

from mirage_ds.tracking.trackers import METRICS_FILE, Tracker, build_tracker, system_metrics, truncate_metrics
from mirage_ds.tracking.versions import library_versions

__all__ = ["METRICS_FILE", "Tracker", "build_tracker", "library_versions", "system_metrics", "truncate_metrics"]
