"""One Table 1: the same evaluations printed by ``mirage-ds reproduce`` (table.md / table.json from eval.json),
``mirage-ds compare`` (read back from a real MLflow sqlite store), ``eval_table.md`` and ``--beside RUN``
give the same rows, to the character."""

from __future__ import annotations

import json
from pathlib import Path

from mirage_ds.config import load_config, save_config
from mirage_ds.eval.comparison import compare
from mirage_ds.eval.degenerate import DegenerateShare
from mirage_ds.eval.metrics import Estimate, kshot_rate
from mirage_ds.eval.report import write_report
from mirage_ds.eval.suite import EvalResult, SubsetResult
from mirage_ds.experiments.runner import beside_base, write_table
from mirage_ds.tracking.mlflow_run import MlflowTracker

HEADER = ("| model | ASR before | ASR after (any of K) | RR before | RR after (any of K) | utility | degenerate |\n"
          "|---|---|---|---|---|---|---|")


def _subset(name: str, metric: str, before: list[bool], after: list[list[bool]] | None, empty_after: int = 0) -> SubsetResult:
    shots = len(after[0]) if after else 0
    n_after = len(after) * shots if after else 0
    return SubsetResult(name, metric, kshot_rate(before, after), shots, DegenerateShare(len(before), 0, 0, 1),
                        DegenerateShare(n_after, empty_after, 0, 0) if after else None, "keyword", 0, 0, "test")


def _result(model: str, harmful: int, attacked: int, refused_after: int, utility: float, empty_after: int = 0) -> EvalResult:
    """An evaluation as the suite returns it: 8 unsafe queries (``harmful`` answered) and their 8 attacks x 3
    shots (``attacked`` answered on some shot), 8 safe questions never refused and their 8 rewrites x 1
    (``refused_after`` refused), 8 unsafe queries on safe images; one repetitive output per subset before the
    attack, ``empty_after`` of the 24 attacked outputs empty: the degenerate column is (2 + empty_after) / 48."""
    unsafes = _subset("unsafes", "asr", [i < harmful for i in range(8)],
                      [[False, i < attacked, False] for i in range(8)], empty_after)
    safe_safes = _subset("safe_safes", "rr", [False] * 8, [[i < refused_after] for i in range(8)])
    safe_unsafes = _subset("safe_unsafes", "asr", [True, False] * 4, None)
    return EvalResult(model, "rule-based", {"unsafes": unsafes, "safe_safes": safe_safes, "safe_unsafes": safe_unsafes},
                      Estimate(utility, utility - 0.1, utility + 0.1, 20), {"flip_rate": 0.5}, {}, {"keywords": "vlguard-v2"},
                      {"template": "llava_v1", "dtype": "float32", "max_new_tokens": 8})


RESULTS = (_result("base", 8, 7, 0, 0.6), _result("Mixed-SFT", 0, 5, 4, 0.45), _result("NPO", 1, 1, 0, 0.5, empty_after=20))


def _rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")]


def test_reproduce_compare_eval_table_and_beside_print_identical_rows(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = {}
    for result in RESULTS:  # each evaluation as `mirage-ds eval --run` leaves it: files and its MLflow run
        run = runs[result.model] = tmp_path / result.model
        MlflowTracker(run, uri, result.model, "table1", retry_s=1).close()
        write_report(result, run / "eval", run)

    evals = [(name, json.loads((run / "eval" / "eval.json").read_text())) for name, run in runs.items()]
    reproduced = write_table(evals, tmp_path / "reproduce", {"seed": 0})
    table_md = (tmp_path / "reproduce" / "table.md").read_text()
    compared = compare(tmp_path / "cmp", experiment="table1", uri=uri)
    eval_tables = [(run / "eval" / "eval_table.md").read_text() for run in runs.values()]
    beside = tmp_path / "NPO"  # `make run`'s table: the run beside its starting model, evaluated once
    save_config(load_config("npo_full").model_copy(update={"recipe": "NPO"}), beside / "config.yaml")
    (beside / "eval-base").mkdir()
    (beside / "eval-base" / "eval.json").write_text((runs["base"] / "eval" / "eval.json").read_text())

    expected = ["| base | 100.0 [100, 100] | 87.5 [62, 100] | 0.0 [0, 0] | 0.0 [0, 0] | 60.0 [50, 70] | 4.2 |",
                "| Mixed-SFT | 0.0 [0, 0] | 62.5 [25, 100] | 0.0 [0, 0] | 50.0 [12, 88] | 45.0 [35, 55] | 4.2 |",
                "| NPO | 12.5 [0, 38] | 12.5† [0, 38] | 0.0 [0, 0] | 0.0 [0, 0] | 50.0 [40, 60] | 45.8 |"]
    assert table_md.startswith(HEADER + "\n") and _rows(table_md) == expected
    assert _rows(compared) == expected and HEADER in compared
    assert [_rows(text)[0] for text in eval_tables] == expected and all(text.startswith(HEADER) for text in eval_tables)
    assert _rows(beside_base(beside).to_markdown()) == [expected[0], expected[2]]
    assert all("† more than 50% of the outputs" in text for text in (table_md, compared, eval_tables[2]))

    # One JSON: reproduce's table.json rows are compare's comparison.json rows.
    table_json = json.loads((tmp_path / "reproduce" / "table.json").read_text())
    assert table_json == reproduced.to_json(seed=0)
    assert table_json["rows"] == json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    npo = table_json["rows"][2]
    assert (npo["asr_after"], npo["ci95"]["asr_after"], npo["marked"], npo["degenerate"]) == (12.5, [0.0, 37.5], ["asr_after"], 45.83)
