"""The real path, on a checkpoint laid out like llava-hf/llava-1.5-7b-hf (tests/hub_standin.py).

Every Table 1 recipe trains in bf16 with exactly its ``paper_scale`` overrides, plus only what a run on the
stand-in needs (its path, shards of VLGuard text with placeholder images, its steps, a micro-batch of 1). One
step each, but two for npo_full and npo_lora (the export tests' runs) and unsafe_filter_lora (LoRA under
gradient checkpointing): the second step is the first one ZeRO-3 runs on its recorded parameter trace, the
path that breaks when a module runs in another order:
the unlearning recipes on 2 ranks through the DeepSpeed launcher, the others on one rank, and one full and one
LoRA recipe also in fp32. The full export and the merged LoRA export load through HF's own processor, chat
template and ``image-text-to-text`` pipeline, with the source's weight keys and dtypes. The config checks
(paper-scale data, README, dtype and length errors) need no run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, VLGUARD
from export_checks import assert_source_layout, header
from launch import launch, metrics, run_one_rank
from mirage_ds.config import ConfigError, load_config
from mirage_ds.paper_scale import paper_scale, paper_scale_recipes

TABLE1 = [f"{m}_{k}" for m in ("unsafe_filter", "mixed_sft", "posthoc_sft", "npo", "rmu") for k in ("full", "lora")]
TWO_RANKS = ["npo_full", "npo_lora", "rmu_full", "rmu_lora"]
FP32 = ["mixed_sft_full", "mixed_sft_lora"]
# What the stand-in runs add to the paper-scale overrides (the inputs are the data, path and step count): the
# VLGuard shards hold placeholder images, which --paper-scale refuses unless allowed.
STANDIN = ["micro_batch_size=1", "data.allow_placeholder_images=true"]
# The runs that take a second step (the module docstring says why); on the stand-in's 16 layers a 2-rank LoRA step
# after the first costs 20 to 45 s here (profiled: with a stage3_max_reuse_distance of 1e9, ZeRO-3 scans the rest
# of its trace at every module release, and the stand-in's tensors are too small to end the scan; one rank skips
# the scan, engine/ds_config.py keep_one_rank_parameters), so the rest take one.
TWO_STEPS = {"npo_full", "npo_lora", "unsafe_filter_lora"}
# Under xdist the export tests run on the worker that trained npo_full and npo_lora (tests/conftest.py).
SHARED_RUNS = pytest.mark.xdist_group("hub-npo")


def _short_entries(safe: bool, n: int) -> list[dict]:
    """The ``n`` VLGuard train entries with the least text: the image alone is 576 of each sample's tokens."""
    entries = [e for e in json.loads((VLGUARD / "train.json").read_text()) if e["safe"] == safe]
    return sorted(entries, key=lambda e: sum(len(v) for pair in e["instr-resp"] for v in pair.values()))[:n]


@pytest.fixture(scope="module")
def vlguard_shards(tmp_path_factory, vlguard: Path) -> dict[str, Path]:
    """train / forget / retain shard directories of real VLGuard text with placeholder images."""
    from mirage_ds.data.converters import ShardOptions
    from mirage_ds.data.vlguard import convert_vlguard

    root = tmp_path_factory.mktemp("vlguard")
    unsafe, safe = _short_entries(False, 4), _short_entries(True, 2)
    dirs = {}
    for name, entries, role in (("forget", unsafe, "forget"), ("retain", safe, "retain"), ("train", safe + unsafe, "sft")):
        (root / f"{name}.json").write_text(json.dumps(entries))
        dirs[name] = root / name
        convert_vlguard(root / f"{name}.json", dirs[name], role=role, options=ShardOptions(min_shards=2))
    return dirs


def _overrides(recipe: str, hub_path: Path, shards: dict[str, Path], out: Path) -> list[str]:
    unlearning = recipe.startswith(("npo", "rmu"))
    data = [f"data.forget={shards['forget']}", f"data.retain={shards['retain']}"] if unlearning else [f"data.train={shards['train']}"]
    return ["--paper-scale", f"model.path={hub_path}", *data, f"max_steps={_steps(recipe)}", f"output_dir={out}", *STANDIN]


def _steps(recipe: str) -> int:
    return 2 if recipe in TWO_STEPS else 1


@dataclass(frozen=True)
class Run:
    code: int
    stderr: str
    out: Path


class Runs:
    """Each run is launched when a test first asks for it, then shared: the export tests reuse npo_full and
    npo_lora, and no single test waits for more than one run."""

    def __init__(self, root: Path, hub_path: Path, shards: dict[str, Path]) -> None:
        self.root, self.hub_path, self.shards = root, hub_path, shards
        self.done: dict[str, Run] = {}

    def __call__(self, recipe: str, *extra: str) -> Run:
        key = "-".join([recipe, *extra]).replace("=", "_")
        if key not in self.done:
            out = self.root / key
            args = [*_overrides(recipe, self.hub_path, self.shards, out), *extra]
            if recipe in TWO_RANKS:
                proc = launch(recipe, *args)
            else:
                proc = run_one_rank(recipe, *args)
            self.done[key] = Run(proc.returncode, proc.stderr, out)
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hub_path: Path, vlguard_shards: dict[str, Path]) -> Runs:
    return Runs(tmp_path_factory.mktemp("hub_runs"), hub_path, vlguard_shards)


def _check_run(run: Run, recipe: str, dtype: str) -> dict:
    code, stderr, out = run.code, run.stderr, run.out
    assert code == 0, stderr[-4000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, _steps(recipe) + 1))
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["dtype"] == dtype
    assert json.loads((out / "ds_config.json").read_text())["bf16"]["enabled"] == (dtype == "bf16")
    return resolved


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.distributed
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=SHARED_RUNS) if r in ("npo_full", "npo_lora") else r
                                    for r in TABLE1])
def test_table1_recipe_runs_at_paper_scale_on_the_standin(recipe: str, runs) -> None:
    resolved = _check_run(runs(recipe), recipe, "bf16")
    scale = paper_scale(recipe)
    # The stand-in's own settings, and the block's epochs: the max_steps given after --paper-scale replaces
    # them (the layering test_config pins), so config.yaml holds that max_steps and no epochs.
    ours = {item.split("=", 1)[0] for item in STANDIN} | {"epochs"}
    assert resolved["epochs"] is None and resolved["max_steps"] == _steps(recipe)
    for item in scale.overrides:
        key, value = item.split("=", 1)
        if key not in ours:
            got, want = _get(resolved, key), yaml.safe_load(value)
            assert got == (float(want) if isinstance(got, float) else want), item


@pytest.mark.distributed
@pytest.mark.parametrize("recipe", FP32)
def test_full_and_lora_recipe_also_run_in_fp32(recipe: str, runs) -> None:
    _check_run(runs(recipe, "model.dtype=fp32"), recipe, "fp32")


def _generate_with_hf(export: Path) -> str:
    """What a user of the export does: the processor's chat template, then the HF pipeline."""
    from PIL import Image
    from transformers import AutoProcessor, pipeline

    processor = AutoProcessor.from_pretrained(export, local_files_only=True)
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat is shown? ASSISTANT:"
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == 32000).sum()) == 576
    pipe = pipeline("image-text-to-text", model=str(export), processor=processor)
    assert pipe.model.dtype == torch.float16
    out = pipe(text=messages, max_new_tokens=4, generate_kwargs={"do_sample": False})
    return out[0]["generated_text"][-1]["content"]


@pytest.mark.distributed
@SHARED_RUNS
def test_full_export_has_the_source_layout_and_loads_in_hf(runs, hub_path: Path) -> None:
    export = runs("npo_full").out / "export"
    assert_source_layout(export, hub_path)
    assert not list(export.parent.glob(".export.*")), "temporary export left behind"
    assert isinstance(_generate_with_hf(export), str)


@pytest.mark.distributed
@SHARED_RUNS
def test_merged_lora_export_is_base_plus_adapter_in_the_source_layout(runs, hub_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    from mirage_ds.cli.main import main

    run_dir = runs("npo_lora").out
    assert main(["export", str(run_dir), "--merge"]) == 0
    merged = run_dir / "export-merged"
    assert_source_layout(merged, hub_path)
    # The merge is W + (alpha / r) B A, computed in fp32 and stored in the source's fp16.
    adapter = load_file(str(run_dir / "export" / "adapter_model.safetensors"))
    q = "language_model.model.layers.3.self_attn.q_proj.weight"
    shard = json.loads((hub_path / "model.safetensors.index.json").read_text())["weight_map"][q]
    base, got = load_file(str(hub_path / shard))[q], load_file(str(merged / shard))[q]
    lora = "base_model.model.model.language_model.layers.3.self_attn.q_proj.lora_{}.weight"
    delta = (256 / 128) * adapter[lora.format("B")].float() @ adapter[lora.format("A")].float()
    assert delta.abs().max() > 0, "the adapter did not train"
    torch.testing.assert_close(got, (base.float() + delta).half(), rtol=0, atol=2e-5)
    projector = "multi_modal_projector.linear_1.weight"
    projector_shard = json.loads((hub_path / "model.safetensors.index.json").read_text())["weight_map"][projector]
    trained = adapter[f"base_model.model.model.{projector}"]
    assert torch.equal(load_file(str(merged / projector_shard))[projector], trained.half())
    assert isinstance(_generate_with_hf(merged), str)
    # A full fine-tuning run has nothing to merge: one line, exit 2.
    capsys.readouterr()
    assert main(["export", str(runs("npo_full").out), "--merge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no LoRA adapter" in err


def test_an_untrained_export_is_the_source_byte_for_byte_and_export_dtype_changes_only_dtypes(tmp_path: Path,
                                                                                              hub_path: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    from mirage_ds.engine.export import atomic_dir, write_full_export

    model = LlavaForConditionalGeneration.from_pretrained(hub_path, local_files_only=True, dtype=torch.float32)
    state = model.state_dict()
    with atomic_dir(tmp_path / "source") as out:
        write_full_export(state, hub_path, out, "source")
    assert_source_layout(tmp_path / "source", hub_path)
    for shard in hub_path.glob("*.safetensors"):
        assert (tmp_path / "source" / shard.name).read_bytes() == shard.read_bytes(), shard.name
    with atomic_dir(tmp_path / "bf16") as out:
        write_full_export(state, hub_path, out, "bf16")
    assert_source_layout(tmp_path / "bf16", hub_path, dtype_from_source=False)
    assert {v["dtype"] for shard in (tmp_path / "bf16").glob("*.safetensors") for v in header(shard).values()} == {"BF16"}
    config, source_config = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "bf16", hub_path))
    assert config["torch_dtype"] == config["text_config"]["torch_dtype"] == "bfloat16"
    config["torch_dtype"] = config["text_config"]["torch_dtype"] = "float16"
    assert config == source_config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16", "source"]  # no temporary directory left


def test_every_table1_recipe_documents_its_paper_scale_as_data() -> None:
    assert set(TABLE1) <= set(paper_scale_recipes())
    for name in paper_scale_recipes():
        scale = paper_scale(name)
        cfg = load_config(name, scale.apply([f"{key}=/given" for key in scale.inputs]))
        assert cfg.model.dtype == "bf16" and cfg.model.path == "/given" and cfg.epochs is not None
        assert "model.path" in scale.inputs
        # The recipe header points at the command instead of listing the values.
        assert f"mirage-ds recipes {name} --paper-scale" in (REPO / "recipes" / f"{name}.yaml").read_text()


def test_paper_scale_refuses_to_start_without_its_inputs() -> None:
    with pytest.raises(ConfigError, match=r"--paper-scale npo_full: also give model.path=<.*> data.forget=<.*> "
                                          r"data.retain=<[^>]*>$"):
        paper_scale("npo_full").apply(["micro_batch_size=2"])
    with pytest.raises(ConfigError, match="base_full.*has no paper_scale block"):
        paper_scale("base_full")


def test_readme_shows_the_paper_scale_command_not_a_copy_of_the_overrides() -> None:
    readme = (REPO / "README.md").read_text()
    assert "mirage-ds recipes npo_lora --paper-scale" in readme
    assert "launcher/run.py --recipe npo_lora --paper-scale" in readme
    for name in paper_scale_recipes():
        values = [item for item in paper_scale(name).overrides if item not in ("model.dtype=bf16",)]
        copied = [line for line in readme.splitlines() if sum(item in line for item in values) >= 2]
        assert not copied, f"README copies {name}'s paper-scale overrides: {copied[0]}"


def test_max_length_default_fits_llava_and_a_shorter_one_names_both_numbers(hub_path: Path) -> None:
    from mirage_ds.engine.preflight import check_against_model

    assert load_config("npo_lora").data.max_length == 2048
    check_against_model(load_config("npo_lora", [f"model.path={hub_path}", "data.max_length=577"]))
    with pytest.raises(ConfigError, match=r"^data.max_length=576 .* takes 576 tokens, so data.max_length must be at least 577$"):
        check_against_model(load_config("npo_lora", [f"model.path={hub_path}", "data.max_length=576"]))


@pytest.mark.distributed  # the last check starts the launcher
def test_dtype_the_engine_cannot_take_is_one_line_exit_2(tmp_path: Path) -> None:
    from mirage_ds.engine.preflight import check_dtype

    forced = json.loads((REPO / "ds_configs" / "zero3.json").read_text()) | {"bf16": {"enabled": True}}
    ds_file = tmp_path / "zero3_bf16.json"
    ds_file.write_text(json.dumps(forced))
    with pytest.raises(ConfigError, match=rf"^model.dtype=fp32 but {ds_file} sets bf16.enabled=true: set model.dtype=bf16"):
        check_dtype(load_config("npo_lora", [f"deepspeed={ds_file}"]))
    check_dtype(load_config("npo_lora", [f"deepspeed={ds_file}", "model.dtype=bf16"]))
    proc = run_one_rank("npo_lora", f"deepspeed={ds_file}", f"output_dir={tmp_path / 'out'}", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: model.dtype=fp32 but "), proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
