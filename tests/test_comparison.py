"""Table 1 from the store (VLGuard and SPA-VL columns, intervals, degenerate marks) and the K-shot figure."""

from __future__ import annotations

import json
from pathlib import Path

from mirage_ds.eval.comparison import KSHOT_FIGURE, compare, kshot_points
from mirage_ds.eval.metrics import kshot_rate
from mirage_ds.eval.report import metrics_of
from mirage_ds.eval.table import MISSING
from mirage_ds.tracking.mlflow_run import MlflowTracker, log_results

# 4 unsafe queries x 3 shots (True: answered harmfully) and 4 safe queries x 1 shot (True: refused).
ASR_BEFORE, ASR_AFTER = [False, False, False, True], [[False, False, True], [False, False, False], [True, True, False], [False] * 3]
RR_BEFORE, RR_AFTER = [True, False, False, False], [[True], [True], [False], [False]]


def _share(n: int, empty: int = 0) -> dict[str, float | int]:
    return {"n": n, "share": empty / n, "empty": empty / n, "off_template": 0.0, "repetitive": 0.0}


def _result(empty_after: int = 0) -> dict:
    """An eval.json as the suite writes it, from the project's own rate function."""
    asr, rr = kshot_rate(ASR_BEFORE, ASR_AFTER).to_dict(), kshot_rate(RR_BEFORE, RR_AFTER).to_dict()
    return {
        "asr": {**asr, "subset": "unsafes"}, "rr": {**rr, "subset": "safe_safes"}, "utility": None, "shortcut": {},
        "subsets": {
            "unsafes": {"metric": "asr", **asr, "degenerate": {"before": _share(4), "after": _share(12, empty_after)}},
            "safe_safes": {"metric": "rr", **rr, "degenerate": {"before": _share(4), "after": _share(4)}},
        },
    }


def test_table1_has_vlguard_and_spavl_columns_intervals_marks_and_a_kshot_figure(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spavl = {"eval/spavl_harm/asr_before": 0.3, "eval/spavl_harm/asr_before_low": 0.2,
             "eval/spavl_harm/asr_before_high": 0.4, "eval/spavl_help/rr_before": 0.05}
    for name, result, extra in (("mixed_sft", _result(), {}), ("npo", _result(empty_after=10), spavl)):
        out = tmp_path / name
        MlflowTracker(out, uri, name, "table1", retry_s=1).close()
        assert log_results(out, {**metrics_of(result), **extra}, [], "eval")

    markdown = compare(tmp_path / "cmp", uri=uri)
    header = next(line for line in markdown.splitlines() if line.startswith("| model"))
    assert header.split(" | ")[1:7] == ["ASR before", "ASR after (any of K)", "RR before", "RR after (any of K)",
                                        "SPA-VL harm ASR", "SPA-VL help RR"]
    rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| model")}
    asr = kshot_rate(ASR_BEFORE, ASR_AFTER)
    before = f"25.0 [{100 * asr.before.low:.0f}, {100 * asr.before.high:.0f}]"
    assert rows["mixed_sft"][1:7] == [before, f"50.0 [{100 * asr.any_of_k.low:.0f}, {100 * asr.any_of_k.high:.0f}]",
                                      rows["mixed_sft"][3], rows["mixed_sft"][4], MISSING, MISSING]
    assert rows["mixed_sft"][3].startswith("25.0 [") and rows["mixed_sft"][4].startswith("50.0 [")
    # 10 of 12 attacked outputs empty: the after-attack ASR is marked; SPA-VL with and without an interval;
    # utility not measured; the degenerate share over the 24 outputs behind the headline rates (10 empty).
    assert rows["npo"][2].startswith("50.0† [") and rows["npo"][5:10] == ["30.0 [20, 40]", "5.0", MISSING, "41.7"]
    assert "† more than 50% of the outputs" in markdown
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["mixed_sft", "npo"] and data["rows"][1]["marked"] == ["asr_after"]
    assert data["rows"][0]["spavl_harm_asr"] is None and data["rows"][1]["ci95"]["spavl_harm_asr"] == [20.0, 40.0]

    # Figure 3's points: the originals, then any of the first k shots (by hand: 1/4, 1/4, 2/4; RR 2/4 at K=1).
    logged = metrics_of(_result())
    assert [(p.k, p.value) for p in kshot_points(logged, "asr")] == [(0, 0.25), (1, 0.25), (2, 0.25), (3, 0.5)]
    assert [(p.k, p.value) for p in kshot_points(logged, "rr")] == [(0, 0.25), (1, 0.5)]
    assert [p.degenerate for p in kshot_points(metrics_of(_result(empty_after=10)), "asr")] == [False, True, True, True]
    figure = tmp_path / "cmp" / KSHOT_FIGURE
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({KSHOT_FIGURE})" in markdown
