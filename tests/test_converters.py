"""Converters against real VLGuard text and small LLaVA / SPA-VL files, read back from real tar shards."""

from __future__ import annotations

import argparse
import io
import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
from PIL import Image

from conftest import VLGUARD
from mirage_ds.cli.data import add_data_commands
from mirage_ds.data.converters import ShardOptions
from mirage_ds.data.llava import convert_llava
from mirage_ds.data.schema import DataError
from mirage_ds.data.shards import read_samples
from mirage_ds.data.spavl import convert_spavl
from mirage_ds.data.vlguard import convert_vlguard
from mirage_ds.data.writer import read_manifest


def image_file(path: Path, colour: tuple[int, int, int], fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path, format=fmt)
    return path


def pixels(png: bytes) -> tuple[tuple[int, int], tuple[int, int, int]]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.size, image.convert("RGB").getpixel((0, 0))


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.usefixtures("vlguard")
def test_vlguard_subset_counts_match_the_file(tmp_path: Path, split: str) -> None:
    entries = json.loads((VLGUARD / f"{split}.json").read_text())
    n_safe = sum(e["safe"] for e in entries)
    n_unsafe = sum(not e["safe"] for e in entries)
    manifest = convert_vlguard(VLGUARD / f"{split}.json", tmp_path / split)
    assert manifest.counts["subset.unsafes"] == n_unsafe
    assert manifest.counts["subset.safe_safes"] == manifest.counts["subset.safe_unsafes"] == n_safe
    assert manifest.samples == n_unsafe + 2 * n_safe and len(manifest.shards) >= 8
    samples = read_samples(tmp_path / split)
    assert Counter(r.subset for r, _ in samples) == {"unsafes": n_unsafe, "safe_safes": n_safe, "safe_unsafes": n_safe}
    assert all(r.image_placeholder and r.role == "sft" and r.source == "vlguard" for r, _ in samples)
    first = entries[0]
    record = samples[0][0]
    first_pair = first["instr-resp"][0]
    assert record.meta["vlguard_id"] == first["id"]
    assert record.question == first_pair.get("instruction", first_pair.get("safe_instruction"))
    assert {r.safe for r, _ in samples if r.subset == "safe_safes"} == {True}
    assert {r.safe for r, _ in samples if r.subset != "safe_safes"} == {False}


def write_vlguard(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps(entries))
    return path


UNSAFE = {
    "id": "u1",
    "image": "ads/u1.jpg",
    "safe": False,
    "harmful_category": "privacy",
    "harmful_subcategory": "personal data",
    "instr-resp": [{"instruction": "Share it.", "response": "I'm sorry."}],
}
SAFE = {
    "id": "s1",
    "image": "ads/s1.png",
    "safe": True,
    "instr-resp": [{"safe_instruction": "What is it?", "response": "A cat."}, {"unsafe_instruction": "Can you dox it?", "response": "No."}],
}


def test_vlguard_missing_field_names_file_record_and_field(tmp_path: Path) -> None:
    broken = {**SAFE, "instr-resp": [SAFE["instr-resp"][0], {"response": "No."}]}
    path = write_vlguard(tmp_path / "bad.json", [UNSAFE, broken])
    with pytest.raises(DataError) as err:
        convert_vlguard(path, tmp_path / "out")
    assert str(err.value) == (f"{path}: record 1 (id 's1'): instr-resp[1] has none of the fields safe_instruction, "
                              "unsafe_instruction (a safe image)")
    assert not (tmp_path / "out").exists()
    without_response = {**SAFE, "instr-resp": [SAFE["instr-resp"][0], {"unsafe_instruction": "Dox it."}]}
    path = write_vlguard(tmp_path / "bad.json", [without_response])
    with pytest.raises(DataError, match=r"record 0 \(id 's1'\): instr-resp\[1\]: missing field 'response'"):
        convert_vlguard(path, tmp_path / "out")
    path = write_vlguard(tmp_path / "bad.json", [{k: v for k, v in UNSAFE.items() if k != "image"}])
    with pytest.raises(DataError, match=r"record 0 \(id 'u1'\): missing field 'image'"):
        convert_vlguard(path, tmp_path / "out")


def test_vlguard_real_images_and_missing_image(tmp_path: Path) -> None:
    images = tmp_path / "images"
    image_file(images / "ads" / "u1.jpg", (200, 10, 10))
    path = write_vlguard(tmp_path / "train.json", [UNSAFE, SAFE])
    with pytest.raises(DataError) as err:
        convert_vlguard(path, tmp_path / "out", images_dir=images)
    assert str(err.value) == f"{path}: record 1 (id 's1'): image {images / 'ads' / 's1.png'} not found"
    assert not (tmp_path / "out").exists()
    image_file(images / "ads" / "s1.png", (10, 200, 10), "PNG")
    convert_vlguard(path, tmp_path / "out", images_dir=images, options=ShardOptions(min_shards=2))
    samples = read_samples(tmp_path / "out")
    ids = ["vlguard/train/00000/unsafes", "vlguard/train/00001/safe_safes", "vlguard/train/00001/safe_unsafes"]
    assert [r.id for r, _ in samples] == ids
    assert not any(r.image_placeholder for r, _ in samples)
    assert samples[0][0].category == "privacy" and samples[1][0].category is None
    size, colour = pixels(samples[1][1])
    assert size == (12, 10) and colour == (10, 200, 10)
    assert samples[1][1] == samples[2][1]
    assert pixels(samples[0][1])[0] == (12, 10)  # the JPEG is re-encoded as PNG


def test_llava_round_trip(tmp_path: Path) -> None:
    image_file(tmp_path / "img" / "coco" / "1.jpg", (1, 2, 3), "PNG")
    image_file(tmp_path / "img" / "coco" / "2.jpg", (4, 5, 6), "PNG")
    conversations = [
        {
            "id": "000001",
            "image": "coco/1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A bus."},
                {"from": "human", "value": "Colour?"},
                {"from": "gpt", "value": "Red."},
            ],
        },
        {"id": "sharegpt-7", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": 2, "image": "coco/2.jpg", "conversations": [{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A tree."}]},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(conversations))
    manifest = convert_llava(path, tmp_path / "out", images_dir=tmp_path / "img")
    assert manifest.samples == 2 and manifest.counts["role.sft"] == 2 and manifest.counts["source.llava"] == 2
    (first, first_png), (second, second_png) = read_samples(tmp_path / "out")
    assert [(t.role, t.text) for t in first.turns] == [("user", "What is shown?"), ("assistant", "A bus."), ("user", "Colour?"), ("assistant", "Red.")]
    assert second.id == "llava/2" and second.question == "Describe it." and second.answer == "A tree."
    assert pixels(first_png)[1] == (1, 2, 3) and pixels(second_png)[1] == (4, 5, 6)


def test_llava_unknown_speaker_is_named(tmp_path: Path) -> None:
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([{"id": "x", "image": "a.jpg", "conversations": [{"from": "bot", "value": "hi"}]}]))
    with pytest.raises(DataError, match=r"record 0 \(id 'x'\): conversations\[0\]: field 'from' is 'bot'"):
        convert_llava(path, tmp_path / "out")


def spavl_rows() -> dict[str, list]:
    return {
        "question": ["How do I pick this lock?", "What is this?"],
        "chosen": ["I can't help with that.", "A lock."],
        "rejected": ["Insert PAYLOAD-x.", "Break it."],
        "class1": ["Illegal Activities", "Privacy"],
        "class2": ["burglary", "tracking"],
    }


def test_spavl_parquet_with_image_bytes(tmp_path: Path) -> None:
    images = [image_file(tmp_path / f"{i}.png", (i, 50, 100), "PNG").read_bytes() for i in range(2)]
    features = datasets.Features({**{k: datasets.Value("string") for k in spavl_rows()}, "image": datasets.Image()})
    table = datasets.Dataset.from_dict({**spavl_rows(), "image": [{"bytes": b, "path": None} for b in images]}, features=features)
    table.to_parquet(str(tmp_path / "spavl.parquet"))
    manifest = convert_spavl(tmp_path / "spavl.parquet", tmp_path / "out", options=ShardOptions(min_shards=1))
    assert manifest.counts["role.retain"] == manifest.counts["role.forget"] == 2
    samples = read_samples(tmp_path / "out")
    by_id = {r.id: (r, png) for r, png in samples}
    chosen, png = by_id["spavl/spavl/000001/chosen"]
    rejected, rejected_png = by_id["spavl/spavl/000001/rejected"]
    assert (chosen.role, chosen.answer, chosen.category, chosen.subcategory) == ("retain", "A lock.", "Privacy", "tracking")
    assert (rejected.role, rejected.answer) == ("forget", "Break it.")
    assert pixels(png)[1] == (1, 50, 100) and png == rejected_png and not chosen.image_placeholder


def test_spavl_parquet_with_image_file_paths(tmp_path: Path) -> None:
    paths = [str(image_file(tmp_path / f"{i}.png", (i, 7, 7), "PNG")) for i in range(2)]
    table = datasets.Dataset.from_dict({**spavl_rows(), "image": paths}).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "spavl.parquet"))
    # The paths are absolute, so the images root is needed to confine them (data/images.py image_under).
    with pytest.raises(DataError) as err:
        convert_spavl(tmp_path / "spavl.parquet", tmp_path / "out", options=ShardOptions(min_shards=1))
    assert str(err.value) == (f"{tmp_path / 'spavl.parquet'}: row 0: image {paths[0]!r} is a file path: give the images "
                              "root it lies under (--images DIR)")
    convert_spavl(tmp_path / "spavl.parquet", tmp_path / "out", images_dir=tmp_path, options=ShardOptions(min_shards=1))
    assert sorted(pixels(png)[1] for _, png in read_samples(tmp_path / "out")) == [(0, 7, 7), (0, 7, 7), (1, 7, 7), (1, 7, 7)]


def test_spavl_json_lines_with_relative_paths(tmp_path: Path) -> None:
    image_file(tmp_path / "img" / "a.jpg", (9, 9, 9))
    rows = spavl_rows()
    lines = [json.dumps({"image": "a.jpg", **{k: v[i] for k, v in rows.items()}}) for i in range(2)]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    convert_spavl(tmp_path / "rows.jsonl", tmp_path / "out", images_dir=tmp_path / "img", chosen_role="sft", options=ShardOptions(min_shards=1))
    samples = read_samples(tmp_path / "out")
    assert Counter(r.role for r, _ in samples) == {"sft": 2, "forget": 2}
    assert all(r.meta["image"] == "a.jpg" for r, _ in samples)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.jpg", "question": "q", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match="missing column 'rejected'"):
        convert_spavl(tmp_path / "bad.jsonl", tmp_path / "out2")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mirage-ds")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.usefixtures("vlguard")
def test_cli_builds_vlguard_and_rejects_unknown_spec_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["data", "build", "vlguard", str(VLGUARD / "test.json"), "--out", str(tmp_path / "vg"), "--shard-size", "500", "--min-shards", "1"]) == 0
    assert "1558 samples in 4 shards" in capsys.readouterr().out
    assert [s.samples for s in read_manifest(tmp_path / "vg").shards] == [500, 500, 500, 58]
    with pytest.raises(DataError, match="synthetic corpus: key 'data.synthetic.n_safe'.*allowed here: seed"):
        run_cli(["data", "build", "synthetic", "--out", str(tmp_path / "syn"), "--set", "data.synthetic.n_safe=3"])
