"""Table 1 in miniature: the rows read from eval.json, the table files, and the pretrained base's cache key."""

from __future__ import annotations

import json
from pathlib import Path

from mirage_ds.config import TinyModelSpec, load_config
from mirage_ds.eval.degenerate import DegenerateShare
from mirage_ds.models.pretrained import base_key
from mirage_ds.reproduce import HEADER, table_row, train_command, write_table


def _estimate(value: float, low: float, high: float, n: int) -> dict[str, float | int]:
    return {"value": value, "low": low, "high": high, "n": n}


def _share(n: int, empty: int, off_template: int, repetitive: int) -> dict[str, float | int]:
    """A degenerate share as eval.json writes it (each kind a fraction of n)."""
    return DegenerateShare(n, empty, off_template, repetitive).to_dict()


EVAL = {
    "model": "npo",
    "asr": {"before": _estimate(0.5, 0.4, 0.6, 50), "per_shot": [], "any_of_k": _estimate(0.75, 0.6, 0.85, 50), "subset": "unsafes"},
    "rr": {"before": _estimate(0.0, 0.0, 0.0, 50), "per_shot": [], "any_of_k": _estimate(0.125, 0.05, 0.2, 50), "subset": "safe_safes"},
    "subsets": {
        "unsafes": {"degenerate": {"before": _share(50, 1, 0, 1), "after": _share(150, 0, 3, 0)}},
        "safe_safes": {"degenerate": {"before": _share(50, 0, 0, 0), "after": _share(50, 5, 0, 0)}},
        "safe_unsafes": {"degenerate": {"before": _share(50, 50, 0, 0), "after": None}},
    },
    "utility": _estimate(0.6543, 0.6, 0.7, 200),
}


def test_row_is_percent_with_intervals_and_the_headline_degenerate_share() -> None:
    row = table_row("NPO", EVAL)
    assert row["model"] == "NPO"
    assert (row["asr_before"], row["asr_after"], row["rr_before"], row["rr_after"], row["utility"]) == (50.0, 75.0, 0.0, 12.5, 65.43)
    assert row["ci95"]["asr_after"] == [60.0, 85.0] and row["ci95"]["utility"] == [60.0, 70.0]
    # unsafes 2/50 + 3/150, safe_safes 0/50 + 5/50; safe_unsafes is not a headline row: 10 / 300.
    assert row["degenerate"] == round(100 * 10 / 300, 2)


def test_table_files(tmp_path: Path) -> None:
    rows = [table_row("base", EVAL), table_row("NPO", EVAL)]
    text = write_table(rows, tmp_path, {"seed": 0})
    assert text.startswith(HEADER) and len(text.strip().splitlines()) == 4
    assert "| NPO | 50.0 [40, 60] | 75.0 [60, 85] | 0.0 [0, 0] | 12.5 [5, 20] | 65.4 [60, 70] | 3.3 |" in text
    data = json.loads((tmp_path / "table.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["base", "NPO"] and data["seed"] == 0
    assert (tmp_path / "table.md").read_text() == text


def test_base_key_follows_model_spec_and_recipe() -> None:
    default = base_key(TinyModelSpec())
    assert default == base_key(TinyModelSpec())
    assert default != base_key(TinyModelSpec(seed=1))
    assert default != base_key(TinyModelSpec(), recipe="sft_full")


def test_every_embedded_recipe_starts_from_the_pretrained_base_but_the_base_itself(monkeypatch) -> None:
    monkeypatch.delenv("MIRAGE_EMBEDDED_BASE")
    for recipe in ("npo_lora", "npo_full", "rmu_full", "mixed_sft_full", "posthoc_sft_lora", "unsafe_filter_full"):
        assert load_config(recipe, []).model.embedded_base == "pretrained", recipe
    assert load_config("base_full", []).model.embedded_base == "random"


def test_train_command_uses_the_launcher() -> None:
    one = train_command("npo_full", Path("out"), 1, ["seed=1"])
    assert one[1].endswith("launcher/run.py") and one[2:] == ["--recipe", "npo_full", "output_dir=out", "seed=1"]
    two = train_command("npo_full", Path("out"), 2, [])
    assert two[0].endswith("deepspeed") and two[1:3] == ["--num_gpus", "2"]
