"""The library versions a run was produced with, recorded in its MLflow params (``versions.<package>``).

A result says what produced it: the same recipe on another transformers or DeepSpeed release is another
experiment (transformers 5.25 changed how attention modules are built, for one).
"""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "transformers", "deepspeed", "peft", "accelerate", "tokenizers", "safetensors", "mlflow", "mirage-ds")


def library_versions() -> dict[str, str]:
    """{"versions.<package>": version} for ``PACKAGES`` ("absent" where one is not installed) and Python."""
    versions = {"versions.python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[f"versions.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"versions.{name}"] = "absent"
    return versions
