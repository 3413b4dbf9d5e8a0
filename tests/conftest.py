"""Shared fixtures. Every test uses real parts: the tiny LLaVA checkpoint, real tar shards, real ranks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
# Recipes start from the untrained tiny model here (the pinned numbers are on it); the pretrained embedded
# base takes minutes to build and is exercised by test_reproduce.py on its own.
os.environ.setdefault("MIRAGE_EMBEDDED_BASE", "random")
# Every training run in the suite logs to one session store (its tables are created once, not per run);
# the tracking tests point runs at their own stores and servers explicitly.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / '.cache-test' / 'mlflow-suite.db'}")
(REPO / ".cache-test").mkdir(exist_ok=True)


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

    return build_model(ModelConfig())


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
