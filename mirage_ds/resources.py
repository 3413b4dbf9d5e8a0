"""Where the shipped files are (the recipes, the DeepSpeed configs, the training launcher) and how a training
command starts the launcher. Standard library only.

In a source checkout (an editable install, or ``PYTHONPATH`` at the repository) they are the repository's
top-level ``recipes/``, ``ds_configs/`` and ``launcher/``. A wheel carries the same folders as package data
under ``mirage_ds/`` (pyproject.toml maps the subpackage names ``mirage_ds.recipes``, ``mirage_ds.ds_configs``
and ``mirage_ds.launcher`` onto the top-level folders), found here through ``importlib.resources``; the
installed launcher also runs as ``python -m mirage_ds.launcher.run``.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

from mirage_ds.ports import free_port

# The repository, when this package is imported from a checkout; in a wheel install, site-packages.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def shipped(name: str) -> Path:
    """The shipped folder ``name`` (``recipes``, ``ds_configs`` or ``launcher``): the installed package's copy,
    else the checkout's top-level folder."""
    packaged = files("mirage_ds") / name
    return Path(str(packaged)) if packaged.is_dir() else SOURCE_ROOT / name


def launcher_command(ranks: int) -> list[str]:
    """The start of a training command, ``--recipe NAME ...`` to follow: the launcher as plain Python for one
    rank (a world of one), the DeepSpeed launcher on ``ranks`` local ranks for more, on a free port so that
    two trainings can start side by side. The DeepSpeed launcher is started as this interpreter's module
    (what the ``deepspeed`` script runs): a venv that sees DeepSpeed through another's site-packages has no
    script of its own."""
    script = str(shipped("launcher") / "run.py")
    if ranks == 1:
        return [sys.executable, script]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", str(free_port()), script]
