"""Real 2-rank ZeRO-3 runs through the `deepspeed` launcher on CPU (gloo), on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export_checks import assert_source_layout
from launch import launch, metrics

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, synthetic_corpus) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    proc = launch("sft_full", f"output_dir={out}", "max_steps=6", "micro_batch_size=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, synthetic_corpus) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    proc = launch("sft_lora", f"output_dir={out}", "max_steps=6", "micro_batch_size=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _check_run(out: Path) -> None:
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("train/loss", "train/lr", "perf/samples_per_s", "perf/tokens_per_s"):
        assert all(key in r for r in rows)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000006").glob("rank*.json")) == ["rank00000.json", "rank00001.json"]


def test_zero3_full_two_ranks_trains_and_exports(full_run: Path, tiny_path: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    _check_run(full_run)
    # The source's own layout: its key names, file and dtype, and its other files byte for byte.
    assert_source_layout(full_run / "export", tiny_path)
    exported = LlavaForConditionalGeneration.from_pretrained(full_run / "export", local_files_only=True)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_path, local_files_only=True)
    e, b = dict(exported.named_parameters()), dict(base.named_parameters())
    assert e.keys() == b.keys()
    changed = {k for k in b if not torch.equal(e[k], b[k])}
    assert any("language_model.layers" in k for k in changed), "language model did not train"
    assert any("multi_modal_projector" in k for k in changed), "projector did not train"
    assert not any("vision_tower" in k for k in changed), "vision tower must stay frozen"


def test_zero3_lora_two_ranks_exports_peft_adapter_that_generates(lora_run: Path) -> None:
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mirage_ds.data.preprocess import Preprocessor
    from mirage_ds.data.template import Template
    from mirage_ds.data.images import placeholder_png

    _check_run(lora_run)
    export = lora_run / "export"
    info = json.loads((export / "base_model.json").read_text())
    base = LlavaForConditionalGeneration.from_pretrained(export / info["base_copy"], local_files_only=True)
    model = PeftModel.from_pretrained(base, export).eval()
    processor = AutoProcessor.from_pretrained(export / "base", local_files_only=True)
    pre = Preprocessor(Template(processor.tokenizer, 16, 256), processor.image_processor, True)
    example = pre.prompt_example("What color is the shape?", placeholder_png("x", 32), "test")
    ids = torch.tensor([example["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=example["pixel_values"][None],
                         max_new_tokens=8, do_sample=False)
    new = out[0, ids.shape[1]:]
    assert new.numel() > 0
    assert isinstance(processor.tokenizer.decode(new, skip_special_tokens=True), str)
    # The adapter is not a no-op: with adapters disabled the logits differ.
    with torch.no_grad():
        on = model(input_ids=ids, pixel_values=example["pixel_values"][None]).logits
        with model.disable_adapter():
            off = model(input_ids=ids, pixel_values=example["pixel_values"][None]).logits
    assert not torch.allclose(on, off)


def test_lora_export_carries_the_base_files_and_merges_into_the_base_layout(lora_run: Path, tiny_path: Path) -> None:
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    from mirage_ds.cli.main import main
    from mirage_ds.engine.export import merge_lora_export

    export = lora_run / "export"
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "generation_config.json"):
        assert (export / name).read_bytes() == (tiny_path / name).read_bytes(), name
    assert not (export / "config.json").exists(), "an adapter directory is not a model"
    assert main(["export", str(lora_run), "--merge"]) == 0
    assert_source_layout(lora_run / "export-merged", tiny_path)
    # Never over an existing directory without --overwrite: the merge again, --out onto the adapter, the library call.
    first = {p.name: p.read_bytes() for p in (lora_run / "export-merged").iterdir()}
    assert main(["export", str(lora_run), "--merge"]) == 2
    assert main(["export", str(lora_run), "--merge", "--out", str(export)]) == 2
    with pytest.raises(FileExistsError, match="export-merged already exists"):
        merge_lora_export(export, lora_run / "export-merged", "source")
    assert {p.name: p.read_bytes() for p in (lora_run / "export-merged").iterdir()} == first
    assert (export / "adapter_config.json").is_file()
    merged = LlavaForConditionalGeneration.from_pretrained(lora_run / "export-merged", local_files_only=True).eval()
    base = LlavaForConditionalGeneration.from_pretrained(tiny_path, local_files_only=True)
    unmerged = PeftModel.from_pretrained(base, export).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_fresh_run_refuses_existing_checkpoints(full_run: Path) -> None:
    proc = launch("sft_full", f"output_dir={full_run}", "max_steps=2", ranks=1)
    assert proc.returncode == 2
    assert "already holds checkpoints; pass resume=auto" in proc.stderr
