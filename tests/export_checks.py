"""Checks that an export is laid out like the checkpoint it was trained from."""

from __future__ import annotations

import json
from pathlib import Path

from mirage_ds.engine.export import INDEX, is_weight_file


def header(path: Path) -> dict:
    """A safetensors file's header (keys -> dtype, shape, offsets), without ``__metadata__``."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return {k: v for k, v in json.loads(f.read(size)).items() if k != "__metadata__"}


def weight_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.safetensors"))


def assert_source_layout(export: Path, source: Path, dtype_from_source: bool = True) -> None:
    """Same weight files, index, keys per file, shapes (and dtypes) as ``source``; every other file byte-equal
    (``config.json`` too unless the dtype is not the source's)."""
    assert weight_files(export) == weight_files(source)
    if (source / INDEX).is_file():
        assert json.loads((export / INDEX).read_text())["weight_map"] == json.loads((source / INDEX).read_text())["weight_map"]
    for name in weight_files(source):
        got, want = header(export / name), header(source / name)
        assert list(got) == list(want), name
        assert {k: v["shape"] for k, v in got.items()} == {k: v["shape"] for k, v in want.items()}
        if dtype_from_source:
            assert {k: v["dtype"] for k, v in got.items()} == {k: v["dtype"] for k, v in want.items()}
    side = sorted(p.name for p in source.iterdir() if p.is_file() and not is_weight_file(p.name))
    assert sorted(p.name for p in export.iterdir() if p.is_file() and not is_weight_file(p.name)) == side
    for name in side:
        if name == "config.json" and not dtype_from_source:
            continue
        assert (export / name).read_bytes() == (source / name).read_bytes(), name


def load_export(out: Path, lora: bool) -> None:
    """A run's ``export/`` loads as users load it: HF ``from_pretrained``, or PEFT over the exported base."""
    from transformers import LlavaForConditionalGeneration

    if lora:
        from peft import PeftModel

        PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(out / "export" / "base", local_files_only=True),
                                  out / "export")
    else:
        LlavaForConditionalGeneration.from_pretrained(out / "export", local_files_only=True)
