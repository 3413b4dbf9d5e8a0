"""Issue 19.9: a wheel installed into a fresh venv (not an editable install) runs from any directory: the recipes
and DeepSpeed configs ship as package data, the launcher as a module, and ``mirage-ds recipes``, ``mirage-ds
train`` (a recipe by name through the DeepSpeed launcher) and ``mirage-ds eval`` work there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, UNTRAINED

# What the wheel is built from: the package, the top-level folders it carries, and the files pyproject.toml names.
SOURCES = ("mirage_ds", "recipes", "ds_configs", "launcher", "pyproject.toml", "README.md")


def test_the_wheel_lists_every_package_and_maps_the_shipped_folders() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "mirage_ds").rglob("__init__.py")}
    mapped = setuptools["package-dir"]
    assert set(setuptools["packages"]) == found | set(mapped)
    assert mapped == {"mirage_ds.recipes": "recipes", "mirage_ds.ds_configs": "ds_configs", "mirage_ds.launcher": "launcher"}


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _fresh_venv_with_the_wheel(root: Path) -> Path:
    """``pip wheel`` of a copy of the sources (no build/ in the checkout), installed into a new venv. The venv
    sees this one's dependencies through a .pth (no network, nothing downloaded); not this one's editable
    mirage-ds, whose finder only this venv's own site directory runs."""
    source = root / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"),
          str(source)])
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the editable mirage-ds visible through the .pth is another venv's, left untouched.
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
          str(next((root / "dist").glob("*.whl")))])
    return venv


@pytest.mark.distributed  # mirage-ds train on 2 DeepSpeed ranks
def test_a_wheel_in_a_fresh_venv_trains_a_recipe_by_name_and_evaluates_it(tmp_path: Path) -> None:
    venv = _fresh_venv_with_the_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"  # outside the repository; runs/ and the default MLflow store go here
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    python, cli = str(venv / "bin" / "python"), str(venv / "bin" / "mirage-ds")
    assert "npo_full: ok" in _run([cli, "recipes"], cwd=elsewhere, env=env).stdout
    _run([cli, "train", "--recipe", "npo_full", "--ranks", "2", UNTRAINED, "max_steps=1", "micro_batch_size=2",
          "output_dir=npo"], cwd=elsewhere, env=env)
    assert (elsewhere / "npo" / "export" / "config.json").is_file()
    record = json.loads((elsewhere / "npo" / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{elsewhere / 'runs' / 'mlflow.db'}"  # the caller's default store
    _run([cli, "eval", "--run", "npo", "--limit", "2", "--max-new-tokens", "4"], cwd=elsewhere, env=env)
    assert json.loads((elsewhere / "npo" / "eval" / "eval.json").read_text())["model"]

    # All of it from the installed package: its recipes and launcher, the launcher also as a module.
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "mirage_ds"
    where = _run([python, "-c", "from mirage_ds.resources import shipped; print(shipped('recipes'), shipped('launcher'))"],
                 cwd=elsewhere, env=env)
    assert where.stdout.split() == [str(installed / "recipes"), str(installed / "launcher")]
    assert "--recipe" in _run([python, "-m", "mirage_ds.launcher.run", "--help"], cwd=elsewhere, env=env).stdout
