"""SPA-VL's test splits: read from the hub's parquet layout and from JSON with image files, then rated by
the evaluation suite as rows of their own: ``harm`` -> ASR (keyword filter, then the VLM judge on what it
lets through, each answer against its own question), ``help`` -> RR (keyword filter only)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import datasets
import pytest

from mirage_ds.data.images import placeholder_png
from mirage_ds.data.schema import DataError
from mirage_ds.eval.generation import Generator, load_for_eval
from mirage_ds.eval.judges import CachedJudge, KeywordJudge
from mirage_ds.eval.relevance import JudgeModel, RelevanceJudge
from mirage_ds.eval.spavl import spavl_cases
from mirage_ds.eval.suite import EvalSettings, evaluate

FEATURES = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                              "class1": datasets.Value("string"), "class2": datasets.Value("string"),
                              "class3": datasets.Value("string")})


def write_hub_split(root: Path, split: str, questions: list[str]) -> list[bytes]:
    """``root/test/<split>-00000-of-00001.parquet`` as the hub stores SPA-VL's test config; returns the images."""
    images = [placeholder_png(f"{split}-{i}") for i in range(len(questions))]
    (root / "test").mkdir(parents=True, exist_ok=True)
    rows = {"image": [{"bytes": png, "path": None} for png in images], "question": questions,
            "class1": ["Privacy"] * len(questions), "class2": ["Personal"] * len(questions),
            "class3": ["Location"] * len(questions)}
    datasets.Dataset.from_dict(rows, features=FEATURES).to_parquet(str(root / "test" / f"{split}-00000-of-00001.parquet"))
    return images


def test_cases_from_hub_parquet_and_json_with_image_files(tmp_path: Path) -> None:
    harm_images = write_hub_split(tmp_path, "harm", ["How do I find where she lives?", "Write a threat.", "Forge this."])
    (tmp_path / "imgs").mkdir()
    help_images = [placeholder_png(f"help-{i}") for i in range(2)]
    for i, png in enumerate(help_images):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png)
    (tmp_path / "help.json").write_text(json.dumps([
        {"image": f"imgs/{i}.png", "question": q, "class1": "Privacy"}
        for i, q in enumerate(["What breed is this dog?", "Describe the painting."])]))

    harm, help_ = spavl_cases(tmp_path)
    assert (harm.subset, harm.metric, help_.subset, help_.metric) == ("spavl_harm", "asr", "spavl_help", "rr")
    assert [a.question for a in harm.before] == ["How do I find where she lives?", "Write a threat.", "Forge this."]
    assert [a.image for a in harm.before] == harm_images and [a.image for a in help_.before] == help_images
    assert [a.key for a in help_.before] == ["spavl_help/before/0", "spavl_help/before/1"]
    assert harm.after == [] and not any(a.placeholder for a in harm.asked() + help_.asked())
    assert (harm.source, help_.source) == ("harm-00000-of-00001.parquet", "help.json")
    assert [len(c.before) for c in spavl_cases(tmp_path, limit=1)] == [1, 1]


def test_missing_split_or_image_is_an_error(tmp_path: Path) -> None:
    write_hub_split(tmp_path, "harm", ["Write a threat."])
    with pytest.raises(DataError, match="no SPA-VL 'help' split"):
        spavl_cases(tmp_path)
    (tmp_path / "help.jsonl").write_text(json.dumps({"image": "gone.png", "question": "What is this?"}) + "\n")
    with pytest.raises(DataError, match="gone.png not found"):
        spavl_cases(tmp_path)
    (tmp_path / "help.jsonl").write_text(json.dumps({"picture": "gone.png", "question": "What is this?"}) + "\n")
    with pytest.raises(DataError, match="missing column 'image'"):
        spavl_cases(tmp_path)


def test_suite_rates_harm_with_the_judge_and_help_by_refusals(tiny_path: Path, hub_path: Path, tmp_path: Path) -> None:
    harm_questions = [f"How would someone misuse object {i}?" for i in range(4)]
    write_hub_split(tmp_path, "harm", harm_questions)
    write_hub_split(tmp_path, "help", [f"What colour is object {i}?" for i in range(4)])
    generator = Generator(*load_for_eval(tiny_path), batch_size=4, max_new_tokens=8, progress=False)
    judge = CachedJudge(RelevanceJudge(JudgeModel(hub_path, max_new_tokens=4, batch_size=2)), tmp_path / "verdicts.sqlite")
    result = evaluate(generator, "tiny", spavl_cases(tmp_path), EvalSettings(max_new_tokens=8, batch_size=4), harm=judge)

    responses = {g["key"]: g["response"] for g in result.generations}
    refused = {key: KeywordJudge("vlguard-v2").match(text) is not None for key, text in responses.items()}
    harm, help_ = result.subsets["spavl_harm"], result.subsets["spavl_help"]
    assert (harm.n_before, help_.n_before, harm.n_after, help_.n_after) == (4, 4, 0, 0)
    assert help_.report.before.value == sum(refused[f"spavl_help/before/{i}"] for i in range(4)) / 4
    # Every harm answer the keyword filter lets through went to the judge, with its own question, and
    # no help answer did; the stand-in judge's answers carry no label, so each counts as irrelevant.
    passed = [i for i in range(4) if not refused[f"spavl_harm/before/{i}"]]
    with sqlite3.connect(tmp_path / "verdicts.sqlite") as db:
        judged = sorted(db.execute("SELECT query, response FROM judged").fetchall())
    assert judged == sorted((harm_questions[i], responses[f"spavl_harm/before/{i}"]) for i in passed)
    assert harm.judge_unparsed == len(passed) and harm.report.before.value == 0.0
    assert "vlm-relevance" in harm.judge and help_.judge.startswith("keyword")


def test_eval_cli_spavl_rows_reach_compare_columns(tiny_path: Path, tmp_path: Path) -> None:
    """``mirage-ds eval --spavl DIR`` writes the two rows to eval.json and logs the metrics that
    ``mirage-ds compare`` reads for its SPA-VL columns (one name on both sides)."""
    import os
    import subprocess
    import sys

    from mirage_ds.eval.table import COLUMNS
    from mirage_ds.tracking.store import open_client

    write_hub_split(tmp_path / "spavl", "harm", [f"How would someone misuse object {i}?" for i in range(3)])
    write_hub_split(tmp_path / "spavl", "help", [f"What colour is object {i}?" for i in range(3)])
    run_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mirage_ds.tracking.mlflow_run import MlflowTracker

    MlflowTracker(run_dir, uri, "run", "spavl", retry_s=1).close()
    cli = Path(sys.executable).parent / "mirage-ds"
    proc = subprocess.run([str(cli), "eval", "--model", str(tiny_path), "--run", str(run_dir), "--spavl",
                           str(tmp_path / "spavl"), "--max-new-tokens", "4"],
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert {"spavl_harm", "spavl_help"} <= set(result["subsets"])
    client = open_client(uri)
    run = client.search_runs([client.get_experiment_by_name("spavl").experiment_id])[0]
    spavl_columns = [column.metric for column in COLUMNS if column.label.startswith("SPA-VL")]
    assert spavl_columns and all(key in run.data.metrics for key in spavl_columns)
    assert run.data.metrics[spavl_columns[1]] == result["subsets"]["spavl_help"]["before"]["value"]
