"""Bad input: one line naming what and where, exit code 2, no traceback; skip policy counts, never hides."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, UNTRAINED
from launch import launch
from mirage_ds.data.writer import write_shards
from shards_util import qa_records
from test_streamer import _rewrite_member

# Each test starts the real launcher (most stop it before any rank, some train).
pytestmark = pytest.mark.distributed


def run_single(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "launcher/run.py", *args, UNTRAINED], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unknown_recipe() -> None:
    _assert_one_line_error(run_single("--recipe", "nope"), "unknown recipe 'nope'", "sft_lora")


def test_unknown_key() -> None:
    _assert_one_line_error(run_single("--recipe", "sft_lora", "optim.lrr=1"), "unknown key 'optim.lrr'", "allowed here")


def test_wrong_type() -> None:
    _assert_one_line_error(run_single("--recipe", "sft_lora", "max_steps=many"), "'max_steps'", "integer")


def test_override_into_an_unset_section() -> None:
    _assert_one_line_error(run_single("--recipe", "sft_full", "model.lora.r=4"),
                           "model.lora is not set in sft_full; use sft_lora or set model.lora={...}")


def test_layer_beyond_the_model_depth_fails_before_training(tmp_path: Path) -> None:
    # Through the real DeepSpeed launcher: before this check the run failed at step 1 with exit 1 and a
    # DataLoader traceback on every rank.
    proc = launch("rmu_lora", "loss.layer=15", f"output_dir={tmp_path}/out", ranks=1)
    line = _assert_one_line_error(proc, "loss.layer=15", "4 language-model layers")
    assert line == "error: loss.layer=15 is out of range: the embedded model has 4 language-model layers (0..3)"
    assert not (tmp_path / "out").exists()


def test_missing_shard_directory(tmp_path: Path) -> None:
    _assert_one_line_error(
        run_single("--recipe", "sft_lora", f"data.train={tmp_path}/absent", f"output_dir={tmp_path}/out"),
        f"{tmp_path}/absent does not exist",
    )


@pytest.fixture()
def bad_shards(tmp_path: Path) -> Path:
    # Flagged as what they are, generated placeholders (as a converter without --images flags them): the
    # manifest counts them and the training run reports them (test_skip_policy_trains_and_counts).
    samples = [(record.model_copy(update={"image_placeholder": True}), png) for record, png in qa_records(12)]
    write_shards(samples, tmp_path / "shards", shard_size=12)
    return tmp_path / "shards"


def _train(shards: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_single("--recipe", "sft_lora", f"data.train={shards}", f"output_dir={out}", "max_steps=3",
                      "micro_batch_size=2", "data.shuffle_buffer=1", *extra)


def test_corrupt_tar_member(bad_shards: Path, tmp_path: Path) -> None:
    shard = next(bad_shards.glob("*.tar"))
    _rewrite_member(shard, "s-0002", "json", b"\x00\x01garbage")
    _assert_one_line_error(_train(bad_shards, tmp_path / "out"), "shard-000000.tar:s-0002")
    assert not (tmp_path / "out" / "export").exists()
    # The tracker is closed on the way out: the MLflow run is FAILED and holds the step logged before the error.
    from mlflow import MlflowClient

    saved = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert client.get_run(saved["run_id"]).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(saved["run_id"], "train/loss")] == [1]


def test_json_missing_required_field(bad_shards: Path, tmp_path: Path) -> None:
    shard = next(bad_shards.glob("*.tar"))
    _rewrite_member(shard, "s-0001", "json", json.dumps({"id": "s-0001", "role": "sft", "source": "synthetic"}).encode())
    _assert_one_line_error(_train(bad_shards, tmp_path / "out"), "shard-000000.tar:s-0001", "'turns'", "Field required")


def test_missing_image(bad_shards: Path, tmp_path: Path) -> None:
    shard = next(bad_shards.glob("*.tar"))
    _rewrite_member(shard, "s-0003", "png", None)
    _assert_one_line_error(_train(bad_shards, tmp_path / "out"), "shard-000000.tar:s-0003", "missing image")


def test_skip_policy_trains_and_counts(bad_shards: Path, tmp_path: Path) -> None:
    shard = next(bad_shards.glob("*.tar"))
    _rewrite_member(shard, "s-0001", "json", b"{broken")
    _rewrite_member(shard, "s-0003", "png", None)
    proc = _train(bad_shards, tmp_path / "out", "data.on_error=skip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/skipped"] == 2
    assert "skipping sample" in proc.stderr and "s-0001" in proc.stderr and "s-0003" in proc.stderr
    # The placeholder images: one header line on rank 0 and an MLflow param, from the manifest's count.
    note = "data.train: 12 samples have generated placeholder images, not real ones (shards built without --images)"
    assert proc.stderr.count(note) == 1, proc.stderr[-3000:]
    from mlflow import MlflowClient

    saved = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())
    params = MlflowClient(tracking_uri=saved["tracking_uri"]).get_run(saved["run_id"]).data.params
    assert params["data.train.placeholder_images"] == "12"


def test_stale_shm_op_build_lock_fails_instead_of_hanging(tmp_path: Path) -> None:
    # A build of DeepSpeed's shm op killed mid-way leaves its lock; without the check every later launch
    # waited on it forever (torch's FileBaton), through the real launcher.
    ops = tmp_path / "torch_extensions"
    lock = ops / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    hour_ago = lock.stat().st_mtime - 3600
    os.utime(lock, (hour_ago, hour_ago))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ops)}
    proc = launch("sft_lora", f"output_dir={tmp_path}/out", ranks=2, env=env, timeout=120)
    line = _assert_one_line_error(proc, str(lock), "minutes old", f"rm {lock}")
    # An hour before the launch, so 60 or more by the time the check reads it (61 on a loaded machine).
    assert int(re.search(r"is (\d+) minutes old", line).group(1)) >= 60, line
    assert not (tmp_path / "out").exists(), line
    assert lock.exists()  # never removed behind the user's back: a live build may own it


@pytest.fixture(scope="module")
def vlguard_placeholders(tmp_path_factory: pytest.TempPathFactory, vlguard: Path) -> dict[str, Path]:
    """forget / retain shards of real VLGuard records built without --images (placeholder images)."""
    from mirage_ds.data.converters import ShardOptions
    from mirage_ds.data.vlguard import convert_vlguard

    root = tmp_path_factory.mktemp("vlguard-placeholders")
    entries = json.loads((vlguard / "train.json").read_text())
    dirs = {}
    for name, safe, n, subset in (("forget", False, 3, "unsafes"), ("retain", True, 2, "safe_safes")):
        (root / f"{name}.json").write_text(json.dumps([e for e in entries if e["safe"] == safe][:n]))
        dirs[name] = root / name
        convert_vlguard(root / f"{name}.json", dirs[name], role=name, subsets=[subset], options=ShardOptions(min_shards=1))
    return dirs


def test_real_model_with_a_stream_the_loss_reads_unset_exits_2_naming_it(tmp_path: Path, hub_path: Path,
                                                                         vlguard_placeholders: dict[str, Path]) -> None:
    # Before this check the run trained NPO's retain term on the synthetic corpus, beside a real model and
    # real forget data, with exit 0 and no word.
    forget = vlguard_placeholders["forget"]
    proc = run_single("--recipe", "npo_lora", f"model.path={hub_path}", f"data.forget={forget}", "max_steps=1",
                      f"output_dir={tmp_path}/out")
    line = _assert_one_line_error(proc, "data.retain")
    assert line == (f"error: loss 'npo' reads data.retain, unset while the run names model.path={hub_path}, "
                    f"data.forget={forget}: give data.retain=<shard dir> (the synthetic corpus stands in only when "
                    "model.path and every data.* are unset)")
    assert not (tmp_path / "out").exists()


def test_paper_scale_refuses_placeholder_images_unless_allowed(tmp_path: Path, hub_path: Path,
                                                              vlguard_placeholders: dict[str, Path]) -> None:
    # The allowed case trains in tests/test_hub_path.py (its stand-in runs set data.allow_placeholder_images).
    data = [f"data.{name}={path}" for name, path in vlguard_placeholders.items()]
    proc = run_single("--recipe", "npo_lora", "--paper-scale", f"model.path={hub_path}", *data, "max_steps=1",
                      f"output_dir={tmp_path}/out")
    line = _assert_one_line_error(proc, "--paper-scale")
    assert line == ("error: --paper-scale: the shards of data.forget (3 samples), data.retain (2 samples) hold generated "
                    "placeholder images, not the real ones (built without --images): rebuild them with --images DIR, "
                    "or set data.allow_placeholder_images=true")
    assert not (tmp_path / "out").exists()
