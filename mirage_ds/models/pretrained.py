"""The pretrained embedded base: the stand-in for LLaVA-1.5-7B that every embedded recipe starts from.

The random-init tiny LLaVA (``models.embedded``) is trained once by the project's own launcher on the
``base_full`` recipe (safe answers, benign how-to answers and the harmful payload answers of every topic
in every phrasing), so the base answers safe questions and complies with harmful ones, as LLaVA-1.5-7B
largely does. Its export is cached under ``<cache>/models/base-<key>``, the key a hash of the tiny
model's spec, the corpus spec, the resolved base recipe and the bytes of the code that shapes it
(``BASE_SOURCES``); the build is atomic and locked like the tiny model's, so concurrent ranks and jobs
build it once.

Building is an explicit step, never a side effect of resolving a path: ``models.loading.ensure_model_path``
(the launcher's and ``mirage-ds reproduce``'s build phase, and ``mirage-ds base build``) calls
``ensure_pretrained_base``, which prints what it builds and a progress bar over the base's training steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from mirage_ds.atomic import publish_dir
from mirage_ds.cache import build_lock, cache_root
from mirage_ds.config import REPO_ROOT, ConfigError, ModelConfig, TinyModelSpec, load_config, load_recipe_dict
from mirage_ds.ports import free_port
from mirage_ds.resources import launcher_command
from mirage_ds.specs.synthetic import SYNTHETIC_FORMAT

BASE_RECIPE = "base_full"
# The launcher's per-rank environment: a base built from inside a rank must not join that rank's job.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT")


# The code that shapes the base beyond its specs and recipe (the recipe itself is keyed resolved, inherit
# chain included): the conversation template and label masking, the tokenizer and its system prompts, the
# tiny model's construction, and the synthetic world's generator and grammar. Editing any of them builds a
# new base instead of reusing one trained by the old code. Paths are relative to the repository root, so the
# key is the same in every clone.
BASE_SOURCES = (
    "mirage_ds/data/template.py", "mirage_ds/data/preprocess.py", "mirage_ds/specs/system_prompts.py",
    "mirage_ds/models/tokenizer.py", "mirage_ds/models/embedded.py", "mirage_ds/data/synthetic.py",
    "mirage_ds/specs/synthetic.py", "mirage_ds/specs/grammar.py", "mirage_ds/specs/rewrite.py",
)


def code_digest(root: Path = REPO_ROOT, sources: Sequence[str] = BASE_SOURCES) -> str:
    """sha256 over each source's relative path and bytes (no mtimes, no absolute paths: stable across clones)."""
    digest = hashlib.sha256()
    for name in sources:
        data = (root / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def base_key(spec: TinyModelSpec, recipe: str = BASE_RECIPE, code_root: Path = REPO_ROOT) -> str:
    """12 hex digits over the tiny model's spec, the base recipe (with its corpus spec), the corpus format and
    ``code_digest(code_root)``."""
    cfg = load_config(recipe, [])
    text = json.dumps({"model": spec.model_dump(mode="json"), "corpus": cfg.data.synthetic.model_dump(mode="json"),
                       "recipe": load_recipe_dict(recipe), "format": SYNTHETIC_FORMAT,
                       "code": code_digest(code_root)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def starts_from_base(cfg: ModelConfig) -> bool:
    """Whether ``cfg`` names the pretrained embedded base (no ``model.path``, ``model.embedded_base=pretrained``)."""
    return cfg.path is None and cfg.embedded_base == "pretrained"


def base_path(spec: TinyModelSpec, recipe: str = BASE_RECIPE) -> Path:
    """Where the base for ``spec`` is cached (built there or not)."""
    return cache_root() / "models" / f"base-{base_key(spec, recipe)}"


def _last_step(metrics: Path) -> int:
    """The step of the last complete row of a run's growing ``metrics.jsonl`` (0 before the first)."""
    text = metrics.read_text() if metrics.is_file() else ""
    rows = text[:text.rfind("\n") + 1].splitlines()  # a row still being written has no newline yet
    return json.loads(rows[-1])["step"] if rows else 0


def train_base(spec: TinyModelSpec, out_dir: Path, recipe: str = BASE_RECIPE) -> None:
    """Train the base with the launcher (one rank) from the random-init tiny model into ``out_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARIABLES}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MASTER_PORT"] = str(free_port())
    command = [*launcher_command(1), "--recipe", recipe,
               f"output_dir={out_dir}", "model.embedded_base=random", "tracking.mlflow=false",
               f"model.embedded={json.dumps(spec.model_dump(mode='json'))}"]
    steps = load_config(recipe, []).max_steps
    log = out_dir.with_name("train.log")
    with open(log, "w") as handle:
        child = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)  # in the caller's directory
        # The child's metrics.jsonl has a row per logged step: the bar follows it (the child's own bar is in the log).
        with tqdm(total=steps, desc="pretrained base", unit="step", file=sys.stderr, mininterval=2) as bar:
            while child.poll() is None:
                time.sleep(1)
                bar.update(_last_step(out_dir / "metrics.jsonl") - bar.n)
    if child.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-5:])
        raise ConfigError(f"training the embedded base failed (exit {child.returncode}): {tail}")


def ensure_pretrained_base(spec: TinyModelSpec, recipe: str = BASE_RECIPE) -> Path:
    """Path of the cached pretrained base for ``spec``, trained once (atomically, under a lock) if absent: the
    named build step (the module docstring says who calls it), printed with a progress bar while it trains."""
    target = base_path(spec, recipe)
    with build_lock(target):
        if not (target / "config.json").is_file():
            print(f"build: training the pretrained embedded base ({recipe}, once per spec and code; a few minutes) "
                  f"into {target}", file=sys.stderr)
            work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
            try:
                train_base(spec, work / "run", recipe)
                publish_dir(work / "run" / "export", target, overwrite=True)  # replaces an incomplete leftover (no config.json)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return target
