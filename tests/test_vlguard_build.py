"""Building the paper's forget / retain sets (docs/paper-protocol.md, section 2) through ``mirage-ds data``.

``data build vlguard --subset`` on the real train.json with image files the test writes; the retain
top-up from another shard set; ``data harmful-responses`` end to end on the hub-layout stand-in.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import VLGUARD
from mirage_ds.cli.main import main
from mirage_ds.data.converters import ShardOptions
from mirage_ds.eval.harmful import KeywordScorer, ModelScorer, most_harmful
from mirage_ds.data.llava import convert_llava
from mirage_ds.data.schema import Record
from mirage_ds.data.shards import read_records, read_samples
from mirage_ds.eval.generation import Generator, Prompt, load_for_eval
from mirage_ds.eval.judges import Exchange

TRAIN = VLGUARD / "train.json"


@pytest.fixture(scope="module")
def train_images(tmp_path_factory: pytest.TempPathFactory, vlguard: Path) -> Path:
    """A 2x2 image file for every image train.json names, coloured by its index."""
    root = tmp_path_factory.mktemp("vlguard-images")
    for i, entry in enumerate(json.loads(TRAIN.read_text())):
        path = root / entry["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2), (i % 256, i // 256, 7)).save(path, format="PNG")
    return root


def build(*argv: str) -> int:
    return main(["data", "build", "vlguard", *map(str, argv)])


@pytest.mark.parametrize("subset,role,count", [("unsafes", "forget", 1023), ("safe_safes", "retain", 977),
                                               ("safe_unsafes", "sft", 977)])
def test_subsets_of_train_json(tmp_path: Path, train_images: Path, subset: str, role: str, count: int) -> None:
    out = tmp_path / subset
    assert build(TRAIN, "--images", train_images, "--subset", subset, "--role", role, "--out", out) == 0
    samples = read_samples(out)
    assert len(samples) == count
    assert {(r.subset, r.role, r.image_placeholder) for r, _ in samples} == {(subset, role, False)}
    assert {r.safe for r, _ in samples} == {subset == "safe_safes"}


@pytest.mark.usefixtures("vlguard")
def test_subsets_repeat_and_keep_file_order(tmp_path: Path) -> None:
    assert build(TRAIN, "--subset", "safe_unsafes", "--subset", "unsafes", "--out", tmp_path / "two") == 0
    records = read_records(tmp_path / "two")
    assert Counter(r.subset for r in records) == {"unsafes": 1023, "safe_unsafes": 977}


@pytest.mark.usefixtures("vlguard")
def test_retain_set_from_a_file_split_by_subset(tmp_path: Path) -> None:
    """Safe images that keep only their safe_instruction pair (a user's split of train.json) are accepted."""
    entries = json.loads(TRAIN.read_text())
    split = [{**e, "instr-resp": e["instr-resp"][:1]} for e in entries if e["safe"]]
    (tmp_path / "safe.json").write_text(json.dumps(split))
    assert build(tmp_path / "safe.json", "--role", "retain", "--out", tmp_path / "retain") == 0
    records = read_records(tmp_path / "retain")
    assert len(records) == 977 and {(r.subset, r.role) for r in records} == {("safe_safes", "retain")}


def _llava_pool(tmp_path: Path, n: int) -> Path:
    conversations = [{"id": f"c{i}", "image": f"coco/{i}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]} for i in range(n)]
    (tmp_path / "llava.json").write_text(json.dumps(conversations))
    convert_llava(tmp_path / "llava.json", tmp_path / "pool", options=ShardOptions(min_shards=4))
    return tmp_path / "pool"


@pytest.mark.usefixtures("vlguard")
def test_retain_top_up_is_seeded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = _llava_pool(tmp_path, 40)
    entries = json.loads(TRAIN.read_text())
    (tmp_path / "few.json").write_text(json.dumps([e for e in entries if e["safe"]][:5]))

    def top_up(out: str, to: int, seed: int) -> list[Record]:
        assert build(tmp_path / "few.json", "--subset", "safe_safes", "--role", "retain", "--top-up", pool,
                     "--to", to, "--seed", seed, "--out", tmp_path / out) == 0
        return read_records(tmp_path / out)

    first, again, other = top_up("a", 12, 42), top_up("b", 12, 42), top_up("c", 12, 7)
    assert len(first) == 12 and Counter(r.source for r in first) == {"vlguard": 5, "llava": 7}
    assert {r.role for r in first} == {"retain"}
    assert all(r.meta["top_up"] == {"from": str(pool), "seed": 42} for r in first if r.source == "llava")
    assert sorted(r.id for r in first) == sorted(r.id for r in again) != sorted(r.id for r in other)
    capsys.readouterr()

    for to, message in [(3, "--to 3: the selection already holds 5 samples"),
                        (46, f"--to 46: 5 samples plus 40 in {pool} cannot make 46")]:
        assert build(tmp_path / "few.json", "--subset", "safe_safes", "--top-up", pool, "--to", to,
                     "--out", tmp_path / "bad") == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    assert build(tmp_path / "few.json", "--to", 9, "--out", tmp_path / "bad") == 2
    assert capsys.readouterr().err == "error: --top-up DIR and --to N go together\n"
    assert not (tmp_path / "bad").exists()


def test_bad_subset_and_missing_image_are_one_line_errors(tmp_path: Path, train_images: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert build(TRAIN, "--subset", "unsafe", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err == "error: unknown VLGuard subset 'unsafe' (known: unsafes, safe_safes, safe_unsafes)\n"

    entries = json.loads(TRAIN.read_text())
    missing = next(i for i, e in enumerate(entries) if e["safe"] and i > 10)
    images = tmp_path / "images"
    for i, entry in enumerate(entries[: missing + 1]):
        if i != missing:
            (images / entry["image"]).parent.mkdir(parents=True, exist_ok=True)
            (images / entry["image"]).write_bytes((train_images / entry["image"]).read_bytes())
    (tmp_path / "head.json").write_text(json.dumps(entries[: missing + 1]))
    # The missing image belongs to a safe record: building only the unsafe subset never reads it.
    assert build(tmp_path / "head.json", "--images", images, "--subset", "unsafes", "--out", tmp_path / "unsafes") == 0
    capsys.readouterr()
    assert build(tmp_path / "head.json", "--images", images, "--subset", "safe_safes", "--out", tmp_path / "out") == 2
    entry = entries[missing]
    expected = (f"error: {tmp_path / 'head.json'}: record {missing} (id {entry['id']!r}): "
                f"image {images / entry['image']} not found\n")
    assert capsys.readouterr().err == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.json", "images", "unsafes"]  # no half-written dir


def test_most_harmful_keeps_the_highest_score_and_its_provenance() -> None:
    record = Record(id="q0", turns=[{"role": "user", "text": "How do I hurt someone?"},
                                    {"role": "assistant", "text": "I'm sorry, I cannot help with that."}],
                    role="sft", source="vlguard", subset="unsafes", safe=False, meta={"vlguard_id": "x"})
    answers = ["I'm sorry, I can't.", "First, find them.", "Step one: wait."]
    (out, image), = most_harmful([(record, b"png")], {"q0": answers}, KeywordScorer(), {"model": "m"})
    provenance = out.meta["harmful_responses"]
    assert (out.answer, out.role, out.question, image) == ("First, find them.", "forget", record.question, b"png")
    assert provenance == {"model": "m", "judge": "keyword", "judge_version": KeywordScorer().version,
                          "candidates": answers, "scores": [0.0, 1.0, 1.0], "chosen": 1, "score": 1.0,
                          "replaced": record.answer}
    assert out.meta["vlguard_id"] == "x"


def test_harmful_responses_end_to_end_on_the_hub_standin(tmp_path: Path, hub_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    entries = json.loads(TRAIN.read_text())
    (tmp_path / "some.json").write_text(json.dumps([e for e in entries if not e["safe"]][:3] + entries[-2:]))
    assert build(tmp_path / "some.json", "--subset", "unsafes", "--out", tmp_path / "unsafes", "--min-shards", 1) == 0
    k = 3
    argv = ["data", "harmful-responses", str(tmp_path / "unsafes"), "--model", str(hub_path), "--candidates", str(k),
            "--seed", "5", "--max-new-tokens", "6", "--batch-size", "2", "--min-shards", "1", "--dtype", "fp32"]
    assert main([*argv, "--judge", f"model:{hub_path}", "--out", str(tmp_path / "forget")]) == 0
    sources = read_samples(tmp_path / "unsafes")
    written = read_samples(tmp_path / "forget")
    assert [r.id for r, _ in written] == [r.id for r, _ in sources]

    # Candidate 0 is the greedy answer of the eval Generator with the same settings.
    model, tokenizer, image_processor = load_for_eval(hub_path)
    greedy = Generator(model, tokenizer, image_processor, batch_size=2, max_new_tokens=6, progress=False).generate(
        [Prompt(r.id, r.question, png) for r, png in sources])
    scorer = ModelScorer(hub_path, batch_size=1)
    for (record, png), (source, source_png) in zip(written, sources):
        meta = record.meta["harmful_responses"]
        assert (png, record.role, record.question) == (source_png, "forget", source.question)
        assert len(meta["candidates"]) == len(meta["scores"]) == k and meta["candidates"][0] == greedy[source.id]
        assert meta["chosen"] == max(range(k), key=lambda i: (meta["scores"][i], -i))
        assert record.answer == meta["candidates"][meta["chosen"]] and meta["score"] == meta["scores"][meta["chosen"]]
        assert (meta["model"], meta["judge"], meta["judge_version"]) == (str(hub_path.resolve()), scorer.name, scorer.version)
        assert meta["replaced"] == source.answer and meta["decoding"]["seed"] == 5
        # Scored in batches of 2 with left padding, each score is the one it gets alone.
        alone = scorer.score([Exchange(source.question, answer) for answer in meta["candidates"]])
        assert meta["scores"] == pytest.approx(alone, rel=1e-4)
    assert len({c for r, _ in written for c in r.meta["harmful_responses"]["candidates"]}) > len(written)  # sampled
    capsys.readouterr()

    assert main([*argv, "--judge", "llm", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err == "error: --judge 'llm': expected keyword[:VERSION] or model:PATH\n"
    assert not (tmp_path / "bad").exists()
