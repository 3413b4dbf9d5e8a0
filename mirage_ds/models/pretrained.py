"""The pretrained embedded base: the stand-in for LLaVA-1.5-7B that every embedded recipe starts from.

The random-init tiny LLaVA (``models.embedded``) is trained once by the project's own launcher on the
``base_full`` recipe (safe answers, benign how-to answers and the harmful payload answers of every topic
in every phrasing), so the base answers safe questions and complies with harmful ones, as LLaVA-1.5-7B
largely does. Its export is cached under ``<cache>/models/base-<key>``, the key a hash of the tiny
model's spec, the corpus spec and the resolved base recipe; the build is atomic and locked like the
tiny model's, so concurrent ranks and jobs build it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mirage_ds.cache import build_lock, cache_root
from mirage_ds.config import REPO_ROOT, ConfigError, TinyModelSpec, load_config, load_recipe_dict
from mirage_ds.ports import free_port
from mirage_ds.specs.synthetic import SYNTHETIC_FORMAT

BASE_RECIPE = "base_full"
# The launcher's per-rank environment: a base built from inside a rank must not join that rank's job.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT")


def base_key(spec: TinyModelSpec, recipe: str = BASE_RECIPE) -> str:
    """12 hex digits over the tiny model's spec, the base recipe (with its corpus spec) and the corpus format."""
    cfg = load_config(recipe, [])
    text = json.dumps({"model": spec.model_dump(mode="json"), "corpus": cfg.data.synthetic.model_dump(mode="json"),
                       "recipe": load_recipe_dict(recipe), "format": SYNTHETIC_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_base(spec: TinyModelSpec, out_dir: Path, recipe: str = BASE_RECIPE) -> None:
    """Train the base with the launcher (one rank) from the random-init tiny model into ``out_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in _RANK_VARIABLES}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MASTER_PORT"] = str(free_port())
    command = [sys.executable, str(REPO_ROOT / "launcher" / "run.py"), "--recipe", recipe,
               f"output_dir={out_dir}", "model.embedded_base=random", "tracking.mlflow=false",
               f"model.embedded={json.dumps(spec.model_dump(mode='json'))}"]
    print(f"building the pretrained embedded base ({recipe}, once per spec; a few minutes) in {out_dir}", file=sys.stderr)
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ConfigError(f"training the embedded base failed (exit {done.returncode}): {tail}")


def ensure_pretrained_base(spec: TinyModelSpec, recipe: str = BASE_RECIPE) -> Path:
    """Path of the cached pretrained base for ``spec``, trained once (atomically, under a lock) if absent."""
    target = cache_root() / "models" / f"base-{base_key(spec, recipe)}"
    with build_lock(target):
        if not (target / "config.json").is_file():
            work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
            try:
                train_base(spec, work / "run", recipe)
                shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover (no config.json)
                (work / "run" / "export").rename(target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return target
