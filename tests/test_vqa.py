"""VQA accuracy: EvalAI normalisation edge cases and leave-one-out scores computed by hand; ScienceQA letters."""

from __future__ import annotations

import pytest

from mirage_ds.eval.vqa import normalize_answer, scienceqa_letter, scienceqa_score, vqa_accuracy, vqa_score


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two.", "2"),
        ("two", "2"),
        ("None", "0"),
        ("a dog", "dog"),
        ("The Dog.", "dog"),
        ("yes!", "yes"),
        ("Yes", "yes"),
        ("dont", "don't"),
        ("Im", "im"),  # EvalAI's capital-I keys never match lowercased text
        ("1,000", "1000"),
        ("2.5", "2.5"),
        ("black-white", "black white"),
        ("black - white", "black white"),
        ("yes, it is", "yes it is"),
        ("  red\n", "red"),
        ("(left)", "left"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_three_of_ten_humans_matching_scores_0_9() -> None:
    # Dropping one of the 3 matching humans leaves 2 -> 2/3; dropping one of the other 7 leaves 3 -> 1.
    answers = ["2", "2", "two"] + ["3"] * 7
    assert vqa_accuracy("Two.", answers) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        (0, 0.0),
        (1, 9 * (1 / 3) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_ten_humans(matches: int, expected: float) -> None:
    answers = ["dog"] * matches + ["cat"] * (10 - matches)
    assert vqa_accuracy("a dog", answers) == pytest.approx(expected)


def test_fewer_than_ten_answers() -> None:
    # 3 humans, 2 match: drop a match -> 1/3 (twice), drop the other -> 2/3.
    assert vqa_accuracy("yes!", ["yes", "Yes", "no"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert vqa_accuracy("circle", ["Circle."]) == 1.0  # one reference: exact match
    assert vqa_accuracy("square", ["circle"]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("x", [])


def test_vqa_score_is_the_mean_over_questions() -> None:
    estimate = vqa_score(["2", "dog"], [["two"] * 10, ["cat"] * 10], resamples=100)
    assert estimate.value == 0.5 and estimate.n == 2
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_score(["a", "b"], [["a"]])


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        (" b \n", "B"),  # a bare letter in either case
        ("B.", "B"),
        ("B. the moon", "B"),
        ("C.x", "C"),
        ("b. the moon", None),  # the letter before the period must be upper-case
        ("The answer is B.", None),  # LLaVA's script reads B here; lmms-eval does not
        ("(B)", None),
        ("Bb", None),
        ("", None),
    ],
)
def test_scienceqa_letter(response: str, letter: str | None) -> None:
    assert scienceqa_letter(response) == letter


def test_scienceqa_score_counts_the_named_choice() -> None:
    # answers are choice indices: 1 = "B"; "b" and "B. moon" name B, "C" and "Sure" do not.
    estimate = scienceqa_score(["b", "B. moon", "C", "Sure"], [1, 1, 1, 1], resamples=100)
    assert estimate.value == 0.5 and estimate.n == 4
    with pytest.raises(ValueError, match="2 predictions but 1"):
        scienceqa_score(["A", "B"], [0])
