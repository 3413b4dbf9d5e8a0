"""One LoRA run on one rank that asks for what it cannot have and for its length in epochs: what ran is what its
config and MLflow record, and an evaluation of its merged export lands in its MLflow run, where `mirage-ds
compare` finds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from launch import metrics, run_one_rank
from shards_util import make_shards

MIRAGE = str(Path(sys.executable).parent / "mirage-ds")
pytestmark = pytest.mark.distributed


@dataclass(frozen=True)
class Run:
    proc: subprocess.CompletedProcess
    out: Path
    experiment: str


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """7 train samples, micro-batch 2, grad_accum 2, 1 epoch on one rank: ceil(7/2) = 4 micro-batches, 2 steps."""
    root = tmp_path_factory.mktemp("resolved")
    experiment = f"resolved-{uuid.uuid4().hex[:8]}"
    train = make_shards(root / "train", 7, 2)
    out = root / "attached"
    proc = run_one_rank("sft_lora", "model.embedded_base=random", f"data.train={train}", "data.num_workers=0",
                        "micro_batch_size=2", "grad_accum=2", "epochs=1", "model.attn_implementation=flash_attention_2",
                        f"tracking.experiment={experiment}", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Run(proc, out, experiment)


def _params(out: Path) -> dict[str, str]:
    from mlflow import MlflowClient

    record = json.loads((out / "mlflow_run.json").read_text())
    return MlflowClient(tracking_uri=record["tracking_uri"]).get_run(record["run_id"]).data.params


def test_flash_attention_without_flash_attn_warns_once_and_records_sdpa(run: Run) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        pytest.skip("flash-attn and CUDA are here: the request is granted")
    saved = yaml.safe_load((run.out / "config.yaml").read_text())
    assert saved["model"]["attn_implementation"] == "sdpa"
    assert saved["resolved"]["attn_implementation"] == "sdpa"  # read back from the loaded model's config
    assert saved["resolved"]["attn_implementation_requested"] == "flash_attention_2"
    why = "flash-attn needs CUDA" if importlib.util.find_spec("flash_attn") else "flash-attn is not installed (the optional gpu extra)"
    warnings = [line for line in run.proc.stderr.splitlines() if "flash_attention_2" in line]
    assert warnings == [f"warning: model.attn_implementation=flash_attention_2 requested but {why}: the run uses sdpa, "
                        "and its config and MLflow params say so"]
    params = _params(run.out)
    assert params["model.attn_implementation"] == params["resolved.attn_implementation"] == "sdpa"
    assert params["resolved.attn_implementation_requested"] == "flash_attention_2"


def test_a_run_in_epochs_trains_the_resolved_steps_and_says_how(run: Run) -> None:
    assert "max_steps 2 = 1 epochs x 2 steps: 7 train samples over 1 ranks x micro_batch_size 2 x grad_accum 2" in \
        run.proc.stdout.splitlines()
    assert [row["step"] for row in metrics(run.out)] == [1, 2]
    saved = yaml.safe_load((run.out / "config.yaml").read_text())
    assert (saved["max_steps"], saved["epochs"]) == (2, None)  # loads back as the run that ran
    assert {k: saved["resolved"][k] for k in ("epochs", "epoch_stream", "epoch_samples", "steps_per_epoch")} == \
        {"epochs": 1, "epoch_stream": "train", "epoch_samples": 7, "steps_per_epoch": 2}
    params = _params(run.out)
    assert (params["max_steps"], params["resolved.epochs"], params["resolved.steps_per_epoch"]) == ("2", "1", "2")


def test_eval_of_the_merged_export_attaches_to_the_run_and_compare_lists_it(run: Run, synthetic_corpus: Path,
                                                                             tmp_path: Path) -> None:
    from mirage_ds.cli.main import main

    assert main(["export", str(run.out), "--merge"]) == 0
    proc = subprocess.run([MIRAGE, "eval", "--model", str(run.out / "export-merged"), "--data",
                           str(synthetic_corpus / "eval"), "--limit", "2", "--max-new-tokens", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"eval: {run.out / 'export-merged'} is inside the tracked run {run.out}" in proc.stderr
    assert json.loads((run.out / "eval" / "eval.json").read_text())["model"] == "attached"
    assert _params(run.out)["eval.protocol"] == "rule-based"
    compared = subprocess.run([MIRAGE, "compare", "--experiment", run.experiment, "--tracking-uri",
                               os.environ["MLFLOW_TRACKING_URI"], "--out", str(tmp_path / "cmp")],
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in compared.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["model", "sft_lora:attached"], compared.stdout  # the MLflow run's name: recipe:output_dir
