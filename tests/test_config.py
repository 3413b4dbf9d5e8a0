from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mirage_ds.config import RECIPES_DIR, ConfigError, list_recipes, load_config, save_config
from mirage_ds.engine.ds_config import build_ds_config


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_loads_and_validates(name: str) -> None:
    cfg = load_config(name)
    assert cfg.recipe == name
    assert cfg.description, f"{name} has no description"
    build_ds_config(cfg, world_size=2, hidden_size=128)


def test_recipes_exist() -> None:
    assert {"sft_full", "sft_lora"} <= set(list_recipes())


def test_dotted_overrides_are_typed() -> None:
    cfg = load_config("sft_lora", ["max_steps=20", "output_dir=/tmp/x", "optim.lr=1e-3", "model.lora.r=4", "data.on_error=skip"])
    assert cfg.max_steps == 20 and cfg.output_dir == "/tmp/x"
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.model.lora is not None and cfg.model.lora.r == 4
    assert cfg.data.on_error == "skip"


def test_inherit_merges_child_over_parent() -> None:
    full, lora = load_config("sft_full"), load_config("sft_lora")
    assert full.model.lora is None and lora.model.lora is not None
    assert lora.loss.name == full.loss.name == "sft"


def test_unknown_key_names_key_file_and_allowed() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("sft_lora", ["optim.lrr=1"])
    msg = str(err.value)
    assert "'optim.lrr'" in msg and "unknown key" in msg and "lr" in msg and "warmup_ratio" in msg
    assert "\n" not in msg


def test_unknown_key_in_recipe_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"inherit": "sft_full", "modle": {"path": None}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'modle' \(allowed here: .*model"):
        load_config(str(bad))


def test_wrong_type_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"override 'max_steps=abc'.*'max_steps'.*integer"):
        load_config("sft_full", ["max_steps=abc"])


def test_missing_recipe_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*available: .*sft_lora"):
        load_config("nope")


def test_unknown_loss_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown loss 'sftt'"):
        load_config("sft_full", ["loss.name=sftt"])


def test_batch_size_consistency_checked(tmp_path: Path) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_batch_size": 7, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}')
    cfg = load_config("sft_full", [f"deepspeed={ds}", "micro_batch_size=2", "grad_accum=2"])
    with pytest.raises(ConfigError, match=r"train_batch_size=7 != micro 2 x accum 2 x world 2"):
        build_ds_config(cfg, world_size=2, hidden_size=64)
    ok = build_ds_config(load_config("sft_full", ["micro_batch_size=2", "grad_accum=3"]), world_size=2, hidden_size=64)
    assert ok["train_batch_size"] == 12


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config("sft_lora", ["seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.model_dump() == cfg.model_dump() | {"recipe": "config"}


def test_config_is_frozen() -> None:
    cfg = load_config("sft_full")
    with pytest.raises(Exception):
        cfg.max_steps = 3  # type: ignore[misc]


def test_recipes_dir_has_only_yaml() -> None:
    assert all(p.suffix == ".yaml" for p in RECIPES_DIR.iterdir())
