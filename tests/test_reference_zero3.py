"""Full fine-tuning NPO under ZeRO-3 with 2 ranks: the separately loaded reference stays frozen."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from launch import DEEPSPEED, free_port

pytestmark = pytest.mark.distributed


def test_full_ft_reference_weights_unchanged_after_training(tmp_path: Path, synthetic_corpus) -> None:
    result = tmp_path / "result.json"
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "tests/scripts/reference_frozen.py",
           str(tmp_path / "run"), str(result)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(result.read_text())
    assert data["policy_changed"] > 0, "the policy did not train, so the check would prove nothing"
    assert data["reference_changed"] == []
