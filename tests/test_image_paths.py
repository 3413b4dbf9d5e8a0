"""Image paths named by a dataset file stay under the images root, in every reader that joins one
(``data/images.py`` ``image_under``): the VLGuard, LLaVA and SPA-VL converters, SPA-VL's eval splits and the
eval's ``--vlguard``/``--images`` cases. Each escape is a real image file outside the root (``../x.png``,
an absolute path elsewhere) or ``/etc/passwd``, so a reader that joined without confinement would read it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mirage_ds.cli.main import main
from mirage_ds.data.converters import ShardOptions
from mirage_ds.data.llava import convert_llava
from mirage_ds.data.schema import DataError
from mirage_ds.data.shards import read_samples
from mirage_ds.data.spavl import convert_spavl, eval_queries
from mirage_ds.data.vlguard import convert_vlguard
from mirage_ds.eval.cases import ImageSource, paper_cases

ONE = ShardOptions(min_shards=1)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """``tmp/root/`` (the images root, holding ``in.png``) beside ``tmp/x.png`` and ``tmp/elsewhere/y.png``."""
    for path in (tmp_path / "root" / "in.png", tmp_path / "x.png", tmp_path / "elsewhere" / "y.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (9, 9, 9)).save(path, format="PNG")
    return tmp_path / "root"


def escapes(root: Path) -> list[str]:
    return ["../x.png", "/etc/passwd", str(root.parent / "elsewhere" / "y.png")]


def refused(root: Path, escape: str) -> str:
    return f"image path {escape!r} is not under the images root {root}"


def vlguard_json(path: Path, image: str) -> Path:
    path.write_text(json.dumps([{"id": "u1", "image": image, "safe": False,
                                 "instr-resp": [{"instruction": "Share it.", "response": "I'm sorry."}]}]))
    return path


def llava_json(path: Path, image: str) -> Path:
    path.write_text(json.dumps([{"id": "7", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]}]))
    return path


def spavl_jsonl(path: Path, image: str) -> Path:
    path.write_text(json.dumps({"image": image, "question": "q?", "chosen": "No.", "rejected": "Yes."}) + "\n")
    return path


def spavl_parquet(path: Path, image: str) -> Path:
    """An image column of ``{bytes, path}`` structs (``datasets.Image``'s storage) holding a file path and no
    bytes: the image it points at is not embedded."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": None, "path": image}], image_type), "question": ["q?"],
                      "chosen": ["No."], "rejected": ["Yes."]})
    pq.write_table(table, path)
    return path


CONVERTERS = {
    "vlguard": (vlguard_json, "train.json", convert_vlguard, "record 0 (id 'u1')"),
    "llava": (llava_json, "llava.json", convert_llava, "record 0 (id '7')"),
    "spavl": (spavl_jsonl, "rows.jsonl", convert_spavl, "row 0"),
    "spavl-parquet-path": (spavl_parquet, "rows.parquet", convert_spavl, "row 0"),
}


@pytest.mark.parametrize("converter", list(CONVERTERS))
@pytest.mark.parametrize("which", range(3), ids=["dotdot", "etc-passwd", "absolute-elsewhere"])
def test_converter_refuses_an_image_path_outside_the_root(root: Path, converter: str, which: int) -> None:
    write, name, convert, record = CONVERTERS[converter]
    escape = escapes(root)[which]
    data = write(root.parent / name, escape)
    with pytest.raises(DataError) as err:
        convert(data, root.parent / "out", images_dir=root, options=ONE)
    assert str(err.value) == f"{data}: {record}: {refused(root, escape)}"
    assert not (root.parent / "out").exists()


@pytest.mark.parametrize("converter", list(CONVERTERS))
def test_converter_reads_an_image_under_the_root_relative_or_absolute(root: Path, converter: str) -> None:
    write, name, convert, _ = CONVERTERS[converter]
    for i, image in enumerate(["in.png", str(root / "in.png"), "sub/../in.png"]):
        convert(write(root.parent / name, image), root.parent / f"out{i}", images_dir=root, options=ONE)
        assert {r.image_placeholder for r, _ in read_samples(root.parent / f"out{i}")} == {False}


def test_cli_build_refuses_it_in_one_line_exit_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = vlguard_json(root.parent / "train.json", "../x.png")
    assert main(["data", "build", "vlguard", str(data), "--images", str(root), "--out", str(root.parent / "out")]) == 2
    assert capsys.readouterr().err == f"error: {data}: record 0 (id 'u1'): {refused(root, '../x.png')}\n"


@pytest.mark.parametrize("which", range(3), ids=["dotdot", "etc-passwd", "absolute-elsewhere"])
def test_spavl_eval_split_refuses_it_under_the_default_root_too(root: Path, which: int) -> None:
    escape = escapes(root)[which]
    (root / "harm.json").write_text(json.dumps([{"image": escape, "question": "q?"}]))
    for images_dir, confined_to in ((None, root), (root, root)):  # the default root: the split file's directory
        with pytest.raises(DataError) as err:
            list(eval_queries(root, "harm", images_dir))
        assert str(err.value) == f"{root / 'harm.json'}: row 0: {refused(confined_to, escape)}"


@pytest.mark.parametrize("placeholders", [False, True])
@pytest.mark.parametrize("which", range(3), ids=["dotdot", "etc-passwd", "absolute-elsewhere"])
def test_eval_vlguard_cases_refuse_it_even_with_placeholders(root: Path, which: int, placeholders: bool) -> None:
    escape = escapes(root)[which]
    vlguard = root.parent / "vlguard"
    vlguard.mkdir()
    vlguard_json(vlguard / "test.json", escape)
    with pytest.raises(DataError) as err:
        paper_cases(vlguard, ImageSource(root, placeholders))
    assert str(err.value) == f"{vlguard / 'test.json'}: record 0 (id 'u1'): {refused(root, escape)}"
