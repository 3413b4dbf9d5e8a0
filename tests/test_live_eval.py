"""The safety eval during training: a 2-rank ZeRO-3 run with eval.every logs ASR/RR step metrics to MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from launch import launch, metrics
from mirage_ds.config import ConfigError, load_config
from mirage_ds.engine.live_eval import PREFIX, live_cases
from mirage_ds.eval.generation import Generator, load_for_eval
from mirage_ds.eval.report import metrics_of
from mirage_ds.eval.suite import EvalSettings, evaluate

RATES = ("asr_before", "asr_after", "rr_before", "rr_after", "asr_after_degenerate", "rr_before_degenerate", "degenerate")


def test_live_eval_on_a_real_model_or_data_needs_its_eval_data() -> None:
    with pytest.raises(ConfigError, match=r"eval.every on a run that sets data.train needs eval.vlguard"):
        load_config("sft_full", ["eval.every=5", "data.train=/data/vlguard_train"])
    assert load_config("sft_full", ["eval.every=5", "data.train=/data/x", "eval.data=/data/eval"]).eval.every == 5
    with pytest.raises(ConfigError, match=r"eval.vlguard needs eval.images"):
        load_config("sft_full", ["eval.vlguard=/data/vlguard"])


@pytest.mark.distributed
def test_zero3_two_ranks_log_live_eval_step_metrics_to_mlflow(tmp_path: Path, synthetic_corpus: Path) -> None:
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A small rate keeps the 4-step model near its random start, whose answers differ by prompt, so the
    # live-vs-offline comparison below compares distinct responses (a trained tiny model answers all alike).
    overrides = ["max_steps=4", "micro_batch_size=2", "optim.lr=1e-5", "eval.every=2", "eval.limit=2",
                 "eval.max_new_tokens=8", "eval.batch_size=4"]
    proc = launch("sft_full", f"output_dir={out}", *overrides, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "live eval at step 2: asr_before" in proc.stdout + proc.stderr

    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    history = {name: client.get_metric_history(run_id, PREFIX + name) for name in RATES}
    for name, points in history.items():
        assert sorted(m.step for m in points) == [2, 4], name
        assert all(0.0 <= m.value <= 1.0 for m in points), name
    # The same numbers in metrics.jsonl (the local record), on rows of their own at steps 2 and 4.
    live_rows = {row["step"]: row for row in metrics(out) if PREFIX + "asr_before" in row}
    assert sorted(live_rows) == [2, 4]
    assert {m.step: m.value for m in history["rr_after"]} == {s: r[PREFIX + "rr_after"] for s, r in live_rows.items()}

    # At the last step the engine holds the exported weights: one process evaluating the export on the same
    # slice (unpartitioned, no synced ranks) gets the same answers and rates as the two ZeRO-3 ranks did.
    cfg = load_config(str(out / "config.yaml"))
    settings = EvalSettings(max_new_tokens=8, batch_size=4, limit=2, seed=cfg.seed)
    model, tokenizer, image_processor = load_for_eval(out / "export")
    generator = Generator(model, tokenizer, image_processor, batch_size=4, max_new_tokens=8,
                          max_length=cfg.data.max_length, pad_to_square=cfg.data.pad_to_square, progress=False)
    result = evaluate(generator, cfg.recipe, live_cases(cfg, settings), settings)
    assert result is not None
    live = [json.loads(line) for line in (out / "live_eval" / "step-00000004.jsonl").read_text().splitlines()]
    assert [(g["key"], g["response"]) for g in live] == [(g["key"], g["response"]) for g in result.generations]
    # unsafes, safe_unsafes and safe_safes: 2 originals and 2 attacked queries x 3 shots each.
    assert len(live) == 24 and len({g["response"] for g in live}) > 1
    offline = metrics_of(result.to_dict())
    assert {k: v for k, v in live_rows[4].items() if k.startswith(PREFIX) and k.removeprefix(PREFIX) in
            {n.removeprefix("eval/") for n in offline}} == {PREFIX + k.removeprefix("eval/"): v for k, v in offline.items()}
