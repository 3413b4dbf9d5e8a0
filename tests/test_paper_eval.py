"""The paper's four cases from the command line (docs/paper-protocol.md, section 4), on the real VLGuard test
files, with an images directory written here; degenerate outputs; no silent fallback to synthetic data."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import VLGUARD
from mirage_ds.config import load_config, save_config
from mirage_ds.data.images import placeholder_png
from mirage_ds.data.schema import DataError
from mirage_ds.eval.attacks.kshot import load_kshot
from mirage_ds.eval.judges import Exchange
from mirage_ds.eval.relevance import JudgeModel, RelevanceJudge

MIRAGE = str(Path(sys.executable).parent / "mirage-ds")


def _mirage(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MIRAGE, *map(str, args)], capture_output=True, text=True, timeout=900, cwd=cwd)


def _images_dir(root: Path) -> Path:
    """An 8x8 PNG (seeded by its path) at every image path the VLGuard test files reference."""
    paths = set()
    for name in ("test.json", "test_what_3shot.json", "test_share_1shot.json"):
        paths |= {entry["image"] for entry in json.loads((VLGUARD / name).read_text())}
    for relative in paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(placeholder_png(relative, 8))
    return root


def _eos_model(tiny_path: Path, out: Path) -> Path:
    """The tiny LLaVA rewired so that "</s>" wins every step: it outputs empty strings.

    With o_proj and down_proj zeroed the residual stream is the token embedding; every embedding gets
    +1 in dimension 0 and the final norm keeps only that dimension, so the normed state is (c, 0, ..., 0)
    with c > 0; lm_head reads dimension 0 as -1 for every token and +1 for "</s>".
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_path, local_files_only=True)
    eos = model.generation_config.eos_token_id
    text = model.model.language_model
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        text.embed_tokens.weight[:, 0] = 1.0
        text.norm.weight.zero_()
        text.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = -1.0
        model.lm_head.weight[eos, 0] = 1.0
    model.save_pretrained(out, safe_serialization=True)
    AutoProcessor.from_pretrained(tiny_path, local_files_only=True).save_pretrained(out)
    return out


@pytest.mark.slow  # 3,440 generations: ~50 s alone on 2 CPU cores, ~90 s beside other work
@pytest.mark.usefixtures("vlguard")
def test_four_cases_from_the_cli(tiny_path: Path, tmp_path: Path) -> None:
    images = _images_dir(tmp_path / "images")
    out = tmp_path / "eval"
    start = time.perf_counter()
    proc = _mirage("eval", "--model", tiny_path, "--vlguard", VLGUARD, "--images", images, "--out", out,
                   "--max-new-tokens", "4", "--batch-size", "32")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "placeholder" not in proc.stderr
    result = json.loads((out / "eval.json").read_text())
    assert result["protocol"] == "vlguard-kshot" and result["counts"]["placeholder_images"] == 0
    rows = result["subsets"]
    assert list(rows) == ["unsafes", "safe_safes", "safe_unsafes"]
    assert rows["unsafes"]["counts"] == {"before": 442, "after": 442, "shot_outputs": 1326, "placeholder_images": 0,
                                         "judge_unparsed": 0}
    assert rows["unsafes"]["shots"] == 3 and len(rows["unsafes"]["per_shot"]) == 3
    assert rows["safe_safes"]["counts"]["before"] == 558
    assert rows["safe_safes"]["counts"]["after"] == rows["safe_safes"]["counts"]["shot_outputs"] == 556
    assert (rows["safe_unsafes"]["counts"]["before"], rows["safe_unsafes"]["any_of_k"]) == (558, None)
    assert [rows[s]["metric"] for s in rows] == ["asr", "rr", "asr"]
    assert result["counts"]["prompts"] == 442 + 1326 + 558 + 556 + 558
    # Table 1's headline is the unsafes row for ASR and the safe_safes row for RR, never a pool.
    assert result["asr"]["subset"] == "unsafes" and result["asr"]["before"] == rows["unsafes"]["before"]
    assert result["rr"]["subset"] == "safe_safes" and result["rr"]["any_of_k"] == rows["safe_safes"]["any_of_k"]
    for row in rows.values():
        assert set(row["degenerate"]["before"]) == {"n", "share", "empty", "off_template", "repetitive"}
    assert result["generation"]["template"] == "llava_v1" and result["generation"]["do_sample"] is False
    table = (out / "eval_table.md").read_text()
    for line in ("| unsafes | ASR |", "| safe_safes | RR |", "| safe_unsafes | ASR |", "442 / 442 x 3", "558 / 556 x 1"):
        assert line in table
    print(f"four cases, {result['counts']['prompts']} generations of <= 4 tokens: {seconds:.1f} s")


@pytest.mark.usefixtures("vlguard")
def test_a_missing_image_names_the_record_and_the_path(tiny_path: Path, tmp_path: Path) -> None:
    images = _images_dir(tmp_path / "images")
    missing = json.loads((VLGUARD / "test.json").read_text())[1]["image"]
    (images / missing).unlink()
    proc = _mirage("eval", "--model", tiny_path, "--vlguard", VLGUARD, "--images", images, "--out", tmp_path / "e")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "record 1 (id " in lines[0] and str(images / missing) in lines[0], proc.stderr


@pytest.mark.usefixtures("vlguard")
def test_placeholder_images_are_counted_and_warned(tiny_path: Path, tmp_path: Path) -> None:
    proc = _mirage("eval", "--model", tiny_path, "--vlguard", VLGUARD, "--placeholder-images", "--limit", "2",
                   "--max-new-tokens", "2", "--out", tmp_path / "e")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: 14 of 14 prompts use placeholder images" in proc.stderr
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert result["counts"]["placeholder_images"] == 14
    assert result["generation"]["dtype"] == "fp32"  # --dtype auto: the tiny checkpoint's own, and fp32 on CPU
    assert result["subsets"]["unsafes"]["counts"]["placeholder_images"] == 2 + 2 * 3
    no_images = _mirage("eval", "--model", tiny_path, "--vlguard", VLGUARD, "--out", tmp_path / "f")
    assert no_images.returncode == 2 and "--images DIR" in no_images.stderr


def test_every_shot_is_judged_against_its_own_question(hub_path: Path, tiny_path: Path, tmp_path: Path) -> None:
    """A VLM judge (the hub-layout LLaVA stand-in: images through its processor, its chat template) over the
    What 3-shot file: the cache records what the judge was shown, shot by shot. Both models in fp16, as the
    paper generates, asked for with --dtype (on CPU the default is fp32): eval.json and MLflow say so."""
    from mirage_ds.models.loading import resolve_dtype
    from mirage_ds.tracking.mlflow_run import MlflowTracker

    # The stand-in is stored in fp16, as llava-hf is: auto loads it so on CUDA, in fp32 on CPU.
    assert (resolve_dtype("auto", hub_path, "cuda:0"), resolve_dtype("auto", hub_path, "cpu")) == ("fp16", "fp32")
    run_dir, out = tmp_path / "run", tmp_path / "eval"
    MlflowTracker(run_dir, os.environ["MLFLOW_TRACKING_URI"], "judged", "judge-dtype").close()
    proc = _mirage("eval", "--run", run_dir, "--model", tiny_path, "--vlguard", VLGUARD, "--placeholder-images",
                   "--limit", "3", "--max-new-tokens", "4", "--out", out, "--judge", f"model:{hub_path}",
                   "--judge-max-new-tokens", "4", "--judge-batch-size", "4", "--judge-prompt-after", "paper-3shot-v1",
                   "--sample", "1000", "--dtype", "fp16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow import MlflowClient

    logged = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"]).get_run(
        json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]).data.params
    assert (logged["eval.dtype"], logged["eval.judge_dtype"]) == ("fp16", "fp16")
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    with sqlite3.connect(out / "verdicts.sqlite") as db:
        judged = {(judge.split("/")[0], query, response) for judge, query, response in
                  db.execute("SELECT judge, query, response FROM judged")}
    shots = [g for g in generations if g["subset"] == "unsafes" and g["phase"] == "after"]
    queries = load_kshot(VLGUARD / "test_what_3shot.json")[:3]
    assert [g["question"] for g in shots] == [text for q in queries for text in q.shots]
    for g in generations:
        if g["subset"] == "safe_safes" or g["refused"]:
            continue  # RR is keyword-only; refusals never reach the harm judge
        prompt = "paper-3shot-v1" if g["phase"] == "after" else "paper-single-v1"
        assert (f"vlm-relevance@{prompt}", g["question"], g["response"]) in judged, g["key"]
    result = json.loads((out / "eval.json").read_text())
    # The stand-in's random weights never start "Relevant:": unparseable, hence irrelevant, hence ASR 0.
    assert result["asr"]["before"]["value"] == result["asr"]["any_of_k"]["value"] == 0.0
    assert result["subsets"]["unsafes"]["counts"]["judge_unparsed"] == sum(
        not g["refused"] for g in generations if g["subset"] == "unsafes")
    assert result["judge"]["prompt_before"] == "paper-single-v1" and result["judge"]["prompt_after"] == "paper-3shot-v1"
    assert result["judge"]["decoding"]["do_sample"] is False and result["judge"]["decoding"]["max_new_tokens"] == 4
    assert (result["generation"]["dtype"], result["judge"]["dtype"]) == ("fp16", "fp16")

    judge = RelevanceJudge(JudgeModel(hub_path, max_new_tokens=4), "paper-3shot-v1")
    for query in queries:
        for k, text in enumerate(query.shots):
            prompt = judge.prompt_text(Exchange(text, "An answer.", image=b"png"))
            others = [t for j, t in enumerate(query.shots) if j != k]
            assert f"Question: {text}\n\nAnswer: An answer.\n\n" in prompt
            assert not any(f"Question: {t}\n" in prompt for t in others)


@pytest.mark.slow  # three CLI processes and a fresh MLflow store: ~70 s on 2 busy CPU cores
@pytest.mark.usefixtures("vlguard")
def test_empty_outputs_are_degenerate_and_compare_marks_them(tiny_path: Path, tmp_path: Path) -> None:
    from mirage_ds.tracking.mlflow_run import MlflowTracker

    model = _eos_model(tiny_path, tmp_path / "collapsed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    MlflowTracker(run_dir, uri, "collapsed", "degenerate-check").close()
    proc = _mirage("eval", "--run", run_dir, "--model", model, "--vlguard", VLGUARD, "--placeholder-images",
                   "--limit", "3", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "eval" / "eval.json").read_text())
    for row in result["subsets"].values():
        for phase in ("before", "after"):
            if row["degenerate"][phase] is not None:
                assert (row["degenerate"][phase]["share"], row["degenerate"][phase]["empty"]) == (1.0, 1.0)
    # Keyword-only ASR counts an empty string as an attack success: 100%, and marked.
    assert result["asr"]["before"]["value"] == 1.0 and result["rr"]["before"]["value"] == 0.0
    table = (run_dir / "eval" / "eval_table.md").read_text()
    assert "100.0† [" in table and "0.0† [" in table and "† more than 50% of the outputs" in table

    compared = _mirage("compare", "--experiment", "degenerate-check", "--tracking-uri", uri, "--out", tmp_path / "cmp")
    assert compared.returncode == 0, compared.stderr[-2000:]
    row = next(line for line in compared.stdout.splitlines() if line.startswith("| collapsed"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [c.split(" [")[0] for c in cells[1:5]] == ["100.0†", "100.0†", "0.0†", "0.0†"]
    assert "† more than 50% of the outputs" in compared.stdout

    from mlflow import MlflowClient

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    logged = MlflowClient(tracking_uri=uri).get_run(run_id).data
    assert logged.metrics["eval/unsafes/asr_before_degenerate"] == 1.0
    assert logged.params["eval.protocol"] == "vlguard-kshot" and logged.params["eval.template"] == "llava_v1"
    assert logged.params["eval.dtype"] == "fp32"
    assert logged.params["eval.judge_model"].startswith("none")


@pytest.mark.parametrize("override", ["model.path=/models/llava-1.5-7b-hf", "data.train=/data/vlguard_train"])
def test_a_run_on_real_model_or_data_needs_explicit_eval_data(override: str, tiny_path: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    save_config(load_config("sft_lora", [override]), run_dir / "config.yaml")
    shutil.copytree(tiny_path, run_dir / "export")
    proc = _mirage("eval", "--run", run_dir)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and override in lines[0] and "--vlguard DIR --images DIR" in lines[0], proc.stderr


def test_a_run_from_an_embedded_runs_export_keeps_the_embedded_eval_set(tiny_path: Path, tmp_path: Path) -> None:
    """Methods trained from a base run (model.path=<base run>/export) are a chain that is still the embedded
    model and corpus, so `eval --run` may use the embedded eval set; a chain that reaches real data may not."""
    from mirage_ds.cli.evaluate import _no_silent_fallback

    base = tmp_path / "base"
    save_config(load_config("base_full"), base / "config.yaml")
    shutil.copytree(tiny_path, base / "export")
    method = tmp_path / "npo_full"
    save_config(load_config("npo_full", [f"model.path={base / 'export'}"]), method / "config.yaml")
    assert (_no_silent_fallback(method) / "eval").is_dir()

    real = tmp_path / "real"
    save_config(load_config("sft_full", ["data.train=/data/vlguard_train"]), real / "config.yaml")
    shutil.copytree(tiny_path, real / "export")
    on_real = tmp_path / "on_real"
    save_config(load_config("npo_full", [f"model.path={real / 'export'}"]), on_real / "config.yaml")
    with pytest.raises(DataError, match="model.path="):
        _no_silent_fallback(on_real)
