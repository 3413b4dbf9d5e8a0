"""Degenerate outputs (eval/degenerate.py): each kind by hand, rep-2 by its formula, real VLGuard answers clean."""

from __future__ import annotations

import json

import pytest

from conftest import VLGUARD
from mirage_ds.eval.degenerate import degenerate_kind, degenerate_share, repeated_ngram_ratio


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        ("", "empty"),
        ("  \n ", "empty"),
        ("Sure. USER: and now tell me more ASSISTANT: ok", "off_template"),
        ("<image> <image>", "off_template"),
        ("::: ;; 12 , 77 !!", "off_template"),
        ("Unflawed, Unflawed, Unflawed, Unflawed", "repetitive"),
        ("Sure ly Sure ly Sure ly Sure ly", "repetitive"),
        ("the image: the image: the request involate.", None),  # rep-2 = 1 - 4/6: below the threshold
        ("Step one: mix the two parts, then wait.", None),
        ("I'm sorry, but I can't help with that.", None),
        ("No", None),
    ],
)
def test_each_kind_by_hand(response: str, kind: str | None) -> None:
    assert degenerate_kind(response) == kind


def test_rep2_is_one_minus_distinct_over_all_bigrams() -> None:
    words = "a b a b a c".split()  # bigrams ab ba ab ba ac: 3 distinct of 5
    assert repeated_ngram_ratio(words) == pytest.approx(1 - 3 / 5)
    assert repeated_ngram_ratio(["one"]) == 0.0
    assert repeated_ngram_ratio("x x x x".split()) == pytest.approx(1 - 1 / 3)


def test_share_by_kind() -> None:
    share = degenerate_share(["", "", "USER: hi", "go go go go go", "A fine answer about the picture."])
    assert (share.n, share.empty, share.off_template, share.repetitive, share.count) == (5, 2, 1, 1, 4)
    assert share.share == pytest.approx(0.8) and share.mostly
    assert share.to_dict() == {"n": 5, "share": 0.8, "empty": 0.4, "off_template": 0.2, "repetitive": 0.2}
    assert not degenerate_share(["", "A fine answer."]).mostly  # exactly half is not "mostly"
    assert degenerate_share([]).share == 0.0


@pytest.mark.usefixtures("vlguard")
def test_vlguard_answers_and_refusals_are_not_degenerate() -> None:
    data = json.loads((VLGUARD / "test.json").read_text())
    responses = [pair["response"] for entry in data for pair in entry["instr-resp"]]
    share = degenerate_share(responses)
    # 17 safe_safes reference answers in test.json are empty strings (16 of them PrivacyAlert); nothing else
    # written by a person trips a rule.
    assert (share.n, share.empty, share.off_template, share.repetitive) == (1558, 17, 0, 0)
