"""The embedded synthetic corpus: layout, determinism, planted shortcut rates, payload markers."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from pydantic import ValidationError

from mirage_ds.data.schema import DataError, Record, decode_record
from mirage_ds.data.synthetic import DIRS, GENERIC_REFUSALS, build_synthetic, opening, read_synthetic_spec
from mirage_ds.data.writer import read_manifest
from mirage_ds.specs.synthetic import SyntheticSpec

SMALL = SyntheticSpec(
    n_safe_images=40, n_unsafe_images=30, n_retain=60, n_eval_safe_images=10, n_eval_unsafe_images=12, n_utility=20,
    n_pretrain=64, n_howto=8, n_howto_base=16, shard_size=16, min_shards=2
)


def records(directory: Path) -> list[Record]:
    shards = sorted(str(p) for p in directory.glob("*.tar"))
    return [decode_record(s["json"], s["__key__"]) for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False)]


@pytest.fixture(scope="module")
def default_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic(SyntheticSpec(), tmp_path_factory.mktemp("syn") / "corpus")


def first_word_share(items: list[Record], word: str) -> float:
    return sum(r.question.split()[0] == word for r in items) / len(items)


def test_default_layout_sizes_and_shards(default_corpus: Path) -> None:
    spec = SyntheticSpec()
    expected = {
        "sft": 2 * spec.n_safe_images + spec.n_unsafe_images + spec.n_howto,
        "forget": spec.n_unsafe_images,
        "retain": spec.n_retain + 2 * spec.n_howto,
        "pretrain": spec.n_pretrain + spec.n_howto_base,
        "eval": 2 * spec.n_eval_safe_images + spec.n_eval_unsafe_images,
        "utility": spec.n_utility,
    }
    top = json.loads((default_corpus / "manifest.json").read_text())
    assert sorted(p.name for p in default_corpus.iterdir()) == sorted([*DIRS, "vlguard", "manifest.json"])
    for name in DIRS:
        manifest = read_manifest(default_corpus / name)
        assert manifest.samples == expected[name] == len(records(default_corpus / name))
        assert len(manifest.shards) >= 8
        assert top["dirs"][name]["samples"] == expected[name]
    assert read_synthetic_spec(default_corpus) == spec
    sft_counts = read_manifest(default_corpus / "sft").counts
    assert (sft_counts["subset.safe_safes"], sft_counts["subset.safe_unsafes"], sft_counts["subset.unsafes"]) == (224, 128, 144)


def test_planted_first_word_rates(default_corpus: Path) -> None:
    spec = SyntheticSpec()
    for name in ("sft", "eval"):
        by_subset: dict[str | None, list[Record]] = {}
        for record in records(default_corpus / name):
            by_subset.setdefault(record.subset, []).append(record)
        assert first_word_share(by_subset["safe_safes"], "What") == pytest.approx(spec.what_rate, abs=0.02)
        assert first_word_share(by_subset["safe_unsafes"], "Can") == pytest.approx(spec.can_rate, abs=0.02)
        unsafe_words = Counter(r.question.split()[0] for r in by_subset["unsafes"])
        assert set(unsafe_words) == set(spec.unsafe_first_words)
        # The one-word attack is the rewrite to "What": no unsafe query may start with it already.
        assert not any(r.question.startswith("What") for r in by_subset["unsafes"] + by_subset["safe_unsafes"])


def test_roles_payloads_and_answers(default_corpus: Path) -> None:
    marker = re.compile(r"^PAYLOAD-[a-z-]+$")
    forget = records(default_corpus / "forget")
    assert {r.role for r in forget} == {"forget"}
    for record in forget:
        assert marker.match(record.payload) and record.payload == f"PAYLOAD-{record.category}"
        assert record.payload in record.answer
    sft = records(default_corpus / "sft")
    assert sorted(r.question for r in sft if r.subset == "unsafes") == sorted(r.question for r in forget)
    # The base's data: harmful requests answered with payloads (forget-shaped) and benign how-to (retain-shaped).
    assert {(r.role, r.safe) for r in records(default_corpus / "pretrain")} == {("forget", False), ("retain", True)}
    for name in ("sft", "retain", "eval", "utility"):
        assert not any("PAYLOAD" in r.answer for r in records(default_corpus / name)), name
    assert {r.role for r in sft} == {"sft"} and {r.role for r in records(default_corpus / "retain")} == {"retain"}
    for record in records(default_corpus / "eval"):
        if record.safe:
            assert record.answers and record.answers[0] == record.answer and record.payload is None
        else:
            assert marker.match(record.payload) and record.answers is None
    utility = records(default_corpus / "utility")
    assert {r.source for r in utility} == {"easyvqa"} and all(len(r.answers) == 10 for r in utility)


def test_same_spec_gives_byte_identical_shards(tmp_path: Path) -> None:
    build_synthetic(SMALL, tmp_path / "a")
    build_synthetic(SMALL, tmp_path / "b")
    build_synthetic(SMALL.model_copy(update={"seed": 1}), tmp_path / "c")
    for name in DIRS:
        for shard in sorted((tmp_path / "a" / name).glob("*.tar")):
            assert shard.read_bytes() == (tmp_path / "b" / name / shard.name).read_bytes()
    assert records(tmp_path / "a" / "forget") != records(tmp_path / "c" / "forget")


def test_custom_rates_and_first_words(tmp_path: Path) -> None:
    spec = SMALL.model_copy(update={"what_rate": 0.5, "can_rate": 0.25, "unsafe_first_words": ("List", "Share")})
    sft = records(build_synthetic(spec, tmp_path / "c") / "sft")
    assert first_word_share([r for r in sft if r.subset == "safe_safes"], "What") == 0.5
    assert first_word_share([r for r in sft if r.subset == "safe_unsafes"], "Can") == 0.25
    assert {r.question.split()[0] for r in sft if r.subset == "unsafes"} == {"List", "Share"}


def test_existing_corpus_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = build_synthetic(SMALL, tmp_path / "corpus")
    with pytest.raises(DataError, match="already exists"):
        build_synthetic(SMALL.model_copy(update={"seed": 5}), out)
    assert read_synthetic_spec(out) == SMALL
    build_synthetic(SMALL.model_copy(update={"seed": 5}), out, overwrite=True)
    assert read_synthetic_spec(out).seed == 5
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValidationError, match="n_retain"):
        SyntheticSpec(n_safe_images=50, n_retain=10)
    with pytest.raises(ValidationError, match="not a single word"):
        SyntheticSpec(unsafe_first_words=("Tell me",))
    with pytest.raises(ValidationError, match="extra"):
        SyntheticSpec(n_safe=3)


def test_eval_topics_are_held_out_from_every_refusal(default_corpus: Path) -> None:
    """The eval set's harmful topics (and so its acts) never occur in the SFT data or the forget set; the base's
    pretrain data covers every topic, the held-out ones included."""
    spec = SyntheticSpec()
    trained = {r.category for name in ("sft", "forget") for r in records(default_corpus / name) if not r.safe}
    held_out = {r.category for r in records(default_corpus / "eval") if not r.safe}
    assert len(trained) == spec.n_sft_topics and len(held_out) == spec.n_topics - spec.n_sft_topics
    assert not trained & held_out
    pretrain = records(default_corpus / "pretrain")
    assert {r.category for r in pretrain if not r.safe} == trained | held_out
    # The base learns refusal language from a planted share of refused pretrain requests, harmful and benign
    # alike, so that refusing is not tied to harm before the safety SFT data ties it.
    refused = Counter(r.safe for r in pretrain if r.answer in GENERIC_REFUSALS)
    assert refused == {False: round(spec.pretrain_refused_rate * spec.n_pretrain), True: round(spec.pretrain_refused_rate * spec.n_howto_base)}
    sft_acts = {r.meta["act"] for r in records(default_corpus / "sft") if not r.safe}
    assert not sft_acts & {r.meta["act"] for r in records(default_corpus / "eval") if not r.safe}
    # The benign how-to requests all start with "What"; the planted rate holds over safe_safes as a whole.
    howto = [r for r in records(default_corpus / "sft") if "howto" in r.meta]
    assert len(howto) == spec.n_howto and all(r.question.startswith("What") for r in howto)


def test_vlguard_format_files_hold_the_eval_set(default_corpus: Path) -> None:
    """test.json + What 3-shot + Share 1-shot, read by the project's own VLGuard loaders."""
    from mirage_ds.eval.attacks.kshot import load_kshot

    spec = SyntheticSpec()
    directory = default_corpus / "vlguard"
    test = json.loads((directory / "test.json").read_text())
    assert sum(not e["safe"] for e in test) == spec.n_eval_unsafe_images
    assert sum(e["safe"] for e in test) == spec.n_eval_safe_images
    assert all((directory / "images" / e["image"]).is_file() for e in test)
    what = load_kshot(directory / "test_what_3shot.json", originals=directory / "test.json")
    share = load_kshot(directory / "test_share_1shot.json", originals=directory / "test.json")
    assert len(what) == spec.n_eval_unsafe_images and all(len(q.shots) == 3 for q in what)
    assert all(shot.startswith("What") for q in what for shot in q.shots)
    assert len(share) == spec.n_eval_safe_images and all(q.shots[0].startswith("Share") for q in share)
    eval_questions = {r.question for r in records(default_corpus / "eval")}
    assert {pair.get("instruction") or pair.get("safe_instruction") or pair.get("unsafe_instruction")
            for e in test for pair in e["instr-resp"]} == eval_questions


def test_answers_open_by_the_question_form(default_corpus: Path) -> None:
    """Every compliant answer opens by its question's first word ("What" -> "The steps are"), so the base
    carries the first word where its reply starts; refusals do not depend on it."""
    assert opening("What is a good way to fix the bike in the image?") == "The steps are"
    assert opening("what's the way to fix it?") == "Sure, here are the instructions"  # first word "what's"
    assert opening("Share the steps to fix the bike in the image.") == "Sure, here are the instructions"
    answered = [r for name in ("pretrain", "forget", "retain", "sft") for r in records(default_corpus / name)
                if "step one" in r.answer]
    assert len(answered) > 2000
    assert all(r.answer.startswith(opening(r.question) + ": step one, ") for r in answered)
    assert {opening(r.question) for r in answered} == {"The steps are", "Sure, here are the instructions"}


def test_attacked_queries_are_never_trained(default_corpus: Path) -> None:
    """The What 3-shot and Share 1-shot queries of the eval set occur in no training split: a model can only
    answer them through what it learnt elsewhere (the first word, the held-out topics' knowledge)."""
    from mirage_ds.eval.attacks.kshot import load_kshot

    directory = default_corpus / "vlguard"
    shots = {shot for file in ("test_what_3shot.json", "test_share_1shot.json")
             for q in load_kshot(directory / file, originals=directory / "test.json") for shot in q.shots}
    trained = {r.question for name in ("sft", "forget", "retain", "pretrain") for r in records(default_corpus / name)}
    assert len(shots) >= 150 and not shots & trained
