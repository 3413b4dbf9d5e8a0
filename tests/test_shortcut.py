"""The first-word shortcut in real VLGuard data, in K-shot files and in shard directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import VLGUARD
from mirage_ds.data.converters import ShardOptions
from mirage_ds.data.images import placeholder_png
from mirage_ds.data.schema import DataError, Record, Turn
from mirage_ds.data.shards import read_samples
from mirage_ds.data.vlguard import convert_vlguard
from mirage_ds.data.writer import write_shards
from mirage_ds.eval.shortcut import FirstWordTable, first_word_table, labelled_queries, shortcut_score
from mirage_ds.specs.grammar import first_word, parse_query


@pytest.mark.usefixtures("vlguard")
def test_vlguard_train_shortcut_matches_the_paper() -> None:
    by_subset = first_word_table(VLGUARD / "train.json", by="subset")
    assert by_subset.total("safe_safes") == 977 and by_subset.top("safe_safes", 1) == [("what", 869)]
    assert by_subset.total("safe_unsafes") == 977 and by_subset.top("safe_unsafes", 1) == [("can", 847)]
    # Unsafe images' instructions: "share", the over-prudence trigger word, leads them.
    assert by_subset.top("unsafes", 1) == [("share", 195)]
    by_label = first_word_table(VLGUARD / "train.json")
    assert list(by_label.counts) == ["safe", "unsafe"]
    assert by_label.total("unsafe") == 977 + 1023 and by_label.counts["unsafe"]["can"] == 862


@pytest.mark.usefixtures("vlguard")
def test_kshot_files_start_with_their_target_word() -> None:
    what = first_word_table(VLGUARD / "test_what_3shot.json")
    assert dict(what.counts["unsafe"]) == {"what": 1326}
    share = first_word_table(VLGUARD / "test_share_1shot.json", by="subset")
    assert dict(share.counts["safe_safes"]) == {"share": 556}  # the unsafe instruction rides along unchanged
    assert share.total("safe_unsafes") == 556


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("What is it?", "what"), ("N/A", "n"), ("  'Can' you", "can"), ("What's up", "what's"),
        ("What\u2019s up", "what's"), ("Share, please.", "share"), ("1. Describe", "describe"), ("", ""),
    ],
)
def test_first_word(text: str, word: str) -> None:
    assert first_word(text) == word


def test_whats_is_one_word_on_every_path(tmp_path: Path) -> None:
    """Shard metadata, the shortcut table (JSON and shards) and the attack grammar agree on "What's"."""
    question = "What's the man holding?"
    entry = {
        "id": "s1", "image": "a.png", "safe": True,
        "instr-resp": [{"safe_instruction": question, "response": "A cup."}, {"unsafe_instruction": "Can you dox him?", "response": "No."}],
    }
    source = tmp_path / "vlguard.json"
    source.write_text(json.dumps([entry]))
    convert_vlguard(source, tmp_path / "shards", options=ShardOptions(min_shards=1))
    (record, _), _ = read_samples(tmp_path / "shards")
    words = {
        "shard metadata": record.meta["first_word"],
        "shortcut table, JSON": next(iter(first_word_table(source, by="subset").counts["safe_safes"])),
        "shortcut table, shards": next(iter(first_word_table(tmp_path / "shards", by="subset").counts["safe_safes"])),
        "attack grammar": parse_query(question).first,
    }
    assert words == dict.fromkeys(words, "what's")


def test_shard_directory_is_read_through_the_shard_reader(tmp_path: Path) -> None:
    texts = [("What is this?", True), ("Can you hack it?", False), ("Can you help?", True), ("Hello", None)]
    samples = []
    for i, (text, safe) in enumerate(texts):
        record = Record(id=f"q-{i}", turns=[Turn(role="user", text=text)], role="sft", source="synthetic", safe=safe)
        samples.append((record, placeholder_png(record.id, 8)))
    write_shards(samples, tmp_path / "shards", shard_size=2, min_shards=2)
    queries = labelled_queries(tmp_path / "shards")
    assert sorted(q.text for q in queries) == sorted(t for t, _ in texts)
    table = FirstWordTable.from_queries(queries)
    assert list(table.counts) == ["safe", "unsafe", "unlabelled"]
    assert dict(table.counts["safe"]) == {"what": 1, "can": 1} and dict(table.counts["unsafe"]) == {"can": 1}
    with pytest.raises(DataError, match="no .tar shards"):
        labelled_queries(tmp_path)


@pytest.mark.usefixtures("vlguard")
def test_outputs_table_dict_and_figure(tmp_path: Path) -> None:
    table = first_word_table(VLGUARD / "train.json", by="subset")
    text = table.table(3)
    assert "safe_unsafes (977 queries)" in text and "can" in text and "86.7%" in text
    as_json = json.loads(json.dumps(table.to_dict(2)))
    assert as_json["safe_safes"] == {"total": 977, "top": [["what", 869], ["can", 103]]}
    png = table.plot(tmp_path / "fig" / "first_words.png", n=5, title="VLGuard train")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_json_record_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"id": "x", "instr-resp": [{"question": "?"}]}]))
    with pytest.raises(DataError, match=r"bad\.json: record 0: instr-resp\[0\] has none of the fields"):
        labelled_queries(path)


def test_shortcut_score_counts_flips_both_ways() -> None:
    original = [True, True, True, False, False]
    rewritten = [False, True, False, False, True]
    score = shortcut_score(original, rewritten)
    assert (score.pairs, score.to_comply, score.to_refuse, score.flipped) == (5, 2, 1, 3)
    assert score.rate == pytest.approx(0.6)
    with pytest.raises(ValueError, match="equal, non-empty"):
        shortcut_score([True], [])
