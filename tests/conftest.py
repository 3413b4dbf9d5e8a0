"""Shared fixtures. Every test uses real parts: the tiny LLaVA checkpoint, real tar shards, real ranks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mirage_ds.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
# The real VLGuard text lives beside the repository (never committed into it); MIRAGE_VLGUARD moves it and,
# when set, wins even if it names a missing directory. Tests that read it request the ``vlguard`` fixture.
VLGUARD = Path(os.environ.get("MIRAGE_VLGUARD") or REPO.parent / "shared" / "data" / "vlguard")
VLGUARD_MISSING = (f"VLGuard text not found at {VLGUARD}: set MIRAGE_VLGUARD=/path/to/vlguard (train.json, test.json, "
                   "test_what_3shot.json, test_share_1shot.json) or place it at ../shared/data/vlguard")

# One cache per test session unless the caller pins one (CI pins it to reuse the tiny model and corpus).
os.environ.setdefault("MIRAGE_CACHE", str(REPO / ".cache-test"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's runs start from the untrained tiny model (the pinned numbers are on it), an override every
# launch passes explicitly (tests/launch.py's helpers add it); the recipes' default, the pretrained embedded
# base, takes minutes to build and is test_mirage.py's.
UNTRAINED = "model.embedded_base=random"


def load_untrained(recipe: str, overrides: list[str] | None = None) -> TrainConfig:
    """``load_config`` with ``UNTRAINED`` before ``overrides``: a recipe as the suite's runs start it."""
    from mirage_ds.config import load_config

    return load_config(recipe, [UNTRAINED, *(overrides or [])])
# Every training run in the suite logs to one session store (its tables are created once, not per run);
# the tracking tests point runs at their own stores and servers explicitly.
# Under pytest-xdist each worker has its own (two writers on one sqlite file would wait on its lock).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / '.cache-test' / f'mlflow-suite-{_WORKER}.db'}")
(REPO / ".cache-test").mkdir(exist_ok=True)

# `make test` runs the suite on 2 pytest-xdist workers (`-n 2 --dist loadgroup --no-loadscope-reorder`): one
# launch is mostly a single core's work (imports, one rank, waits on Slurm or an MLflow server), so two at once
# fill the machine. A module's tests stay on one worker (its module-scoped runs, the one Slurm cluster), except the
# modules below, whose tests share nothing but session fixtures (cached on disk under a lock) and so
# spread over both workers; a test there may still pin a group of its own (test_hub_path's export tests
# share their recipe's run).
SPREAD = {"test_recipes_smoke.py", "test_pinned_losses.py", "test_hub_path.py", "test_tracking.py", "test_errors.py",
          "test_baselines.py"}
# Sent first, longest first, so that no long test starts last and leaves one worker alone at the end.
FIRST = ["test_mirage.py", "test_slurm.py", "test_reproduce.py", "test_hub_path.py", "test_recipes_smoke.py",
         "test_pinned_losses.py", "test_faults.py", "test_tracking.py", "test_install.py", "test_baselines.py",
         "test_distributed.py"]


# `make test-fast` (MIRAGE_TEST_FAST=1, `-m "not distributed and not slow and not slurm"`): the tests that
# launch no ranks. A test there that starts the launcher, DeepSpeed's runner or a reproduction fails, naming
# the marker it lacks, so the fast set cannot quietly grow slow.
FAST = os.environ.get("MIRAGE_TEST_FAST") == "1"
LAUNCHES = ("launcher/run.py", "bin/deepspeed", "reproduce")


class _NoLaunchPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        words = [str(a) for a in ([args] if isinstance(args, (str, Path)) else args)]
        if any(marker in word for word in words for marker in LAUNCHES) and "--help" not in words:
            pytest.fail(f"launches ranks under make test-fast ({' '.join(words)[:200]}): mark the test "
                        "'distributed' (or 'slow')", pytrace=False)
        super().__init__(args, *rest, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    if FAST:
        subprocess.Popen = _NoLaunchPopen


# tryfirst: pytest-xdist's worker tags each test's id with its group in its own collection hook; a mark added
# after that hook has no effect, and every module's tests would be spread over both workers (each worker then
# runs the module-scoped launches, the Slurm cluster and test_hub_path's shared runs again).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name not in SPREAD and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: a module's own order is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Under ``--dist loadgroup`` every test must carry its group in its id (what xdist schedules by): with a
    pytest that xdist cannot tag (9.2 with xdist 3.8) the groups split silently and the suite runs its shared
    launches twice. Stop before any test runs instead, naming the versions."""
    if node.config.getoption("dist") != "loadgroup":
        return
    # xdist's own rule for a group suffix (LoadGroupScheduling._split_scope); SPREAD's tests go one by one.
    untagged = [nodeid for nodeid in ids if nodeid.rfind("@") <= nodeid.rfind("]")
                and Path(nodeid.split("::", 1)[0]).name not in SPREAD]
    if untagged:
        from importlib.metadata import version

        pytest.exit(f"xdist_group not applied to {len(untagged)} of {len(ids)} tests (e.g. {untagged[0]}) under pytest "
                    f"{version('pytest')} with pytest-xdist {version('pytest-xdist')}: install the lock's versions "
                    "(make venv)", returncode=2)


@pytest.fixture(autouse=True)
def _suite_store_kept():
    """Every test ends with the suite's store in ``$MLFLOW_TRACKING_URI``. ``mlflow.set_tracking_uri`` (which the
    fluent API needs) also sets that variable, so that subprocesses inherit it: a test calling it would hand its
    own store, often a server it then stops, to every later test on its worker, whose runs then waited out a
    dead server (CI at a949dc8: a resumed-run tracking test and test_resolved_run found no MLflow run, the 2-rank
    full run timed out)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)  # sets the variable again, or unsets it for None


@pytest.fixture(scope="session")
def vlguard() -> Path:
    """The VLGuard text directory. The suite's one non-hardware skip: a test that needs the text (itself, with
    ``@pytest.mark.usefixtures("vlguard")``, or through a fixture such as ``hub_path``) skips, saying where to
    put it, when the directory is missing."""
    if not VLGUARD.is_dir():
        pytest.skip(VLGUARD_MISSING)
    return VLGUARD


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from mirage_ds.config import TinyModelSpec
    from mirage_ds.models.embedded import ensure_embedded_model

    return ensure_embedded_model(TinyModelSpec())


@pytest.fixture(scope="session")
def tiny_bundle(tiny_path: Path):
    from mirage_ds.config import ModelConfig
    from mirage_ds.models.loading import build_model

    return build_model(ModelConfig(embedded_base="random"))


@pytest.fixture(scope="session")
def synthetic_corpus() -> Path:
    from mirage_ds.data.corpus import ensure_synthetic
    from mirage_ds.specs.synthetic import SyntheticSpec

    return ensure_synthetic(SyntheticSpec())


@pytest.fixture(scope="session")
def hub_path(vlguard: Path) -> Path:
    """A stand-in for llava-hf/llava-1.5-7b-hf: the hub's layout and files, tiny tensors (tests/hub_standin.py);
    its tokenizer is built from VLGuard's train.json."""
    from hub_standin import ensure_hub_standin

    return ensure_hub_standin(vlguard / "train.json")
