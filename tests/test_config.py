from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from conftest import REPO, load_untrained
from mirage_ds.config import RECIPES_DIR, ConfigError, list_recipes, load_config, save_config
from mirage_ds.engine.ds_config import ONE_RANK_KEPT_ELEMENTS, build_ds_config
from mirage_ds.engine.preflight import check_against_model
from mirage_ds.losses.registry import REGISTRY
from mirage_ds.specs.losses import LOSS_CONFIGS, NPOConfig, RMUConfig


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


def test_one_rank_keeps_its_parameters_gathered_where_the_json_leaves_it_to_us(tmp_path: Path) -> None:
    """One ZeRO-3 rank keeps every parameter gathered up to the budget (its partition is the whole tensor);
    more ranks, offloaded parameters and a threshold the JSON names keep the HF rule or the JSON's number."""
    def zero(cfg, world: int) -> dict:
        return build_ds_config(cfg, world_size=world, hidden_size=64)["zero_optimization"]

    one, two = zero(load_config("sft_full"), 1), zero(load_config("sft_full"), 2)
    assert one["stage3_param_persistence_threshold"] == one["stage3_model_persistence_threshold"] == ONE_RANK_KEPT_ELEMENTS
    assert one["stage3_max_reuse_distance"] == 0
    for many in (two, zero(load_config("sft_full", ["deepspeed=zero3_offload.json"]), 1)):
        assert many["stage3_param_persistence_threshold"] == 640 and "stage3_model_persistence_threshold" not in many
        assert many["stage3_max_reuse_distance"] == 1e9
    named = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    named["zero_optimization"].update(stage3_param_persistence_threshold=1000, stage3_max_reuse_distance=5e8)
    (tmp_path / "named.json").write_text(json.dumps(named))
    mine = zero(load_config("sft_full", [f"deepspeed={tmp_path / 'named.json'}"]), 1)
    assert (mine["stage3_param_persistence_threshold"], mine["stage3_max_reuse_distance"]) == (1000, 5e8)
    assert "stage3_param_persistence_threshold" not in zero(load_config("sft_full", ["deepspeed=zero2.json"]), 1)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config("npo_lora", ["seed=7"])  # a recipe that inherits: the child's name, not sft_lora's
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg and again.recipe == "npo_lora"


def test_config_is_frozen() -> None:
    cfg = load_config("sft_full")
    with pytest.raises(ValidationError, match="frozen_instance"):
        cfg.max_steps = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen_instance"):
        cfg.loss.name = "npo"  # type: ignore[misc]


def test_validating_every_recipe_imports_no_torch() -> None:
    code = ("import sys; from mirage_ds.config import list_recipes, load_config; "
            "[load_config(r) for r in list_recipes()]; "
            "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'PIL') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_loss_section_class_is_picked_by_name() -> None:
    assert REGISTRY.keys() == LOSS_CONFIGS.keys()
    assert isinstance(load_config("npo_full").loss, NPOConfig)
    assert isinstance(load_config("rmu_lora").loss, RMUConfig)
    assert type(load_config("sft_full", ["loss={name: rmu, layer: 1}"]).loss) is RMUConfig


def test_unknown_key_in_loss_lists_that_loss_s_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("npo_full", ["loss.bta=1"])
    assert str(err.value) == ("override 'loss.bta=1': unknown key 'loss.bta' (allowed here: beta, forget_weight, logp, "
                              "name, preset, retain_ce_weight, retain_npo_form, retain_npo_weight)")
    with pytest.raises(ConfigError, match=r"unknown key 'loss.layer' \(allowed here: name\)"):
        load_config("sft_full", ["loss.layer=2"])


def test_npo_preset_fills_only_missing_keys() -> None:
    paper = load_config("npo_full").loss
    assert (paper.preset, paper.logp, paper.beta) == ("paper", "mean", 0.9)
    classic = load_config("npo_full", ["loss.preset=classic"]).loss
    assert (classic.logp, classic.beta) == ("sum", 0.1)
    assert load_config("npo_lora", ["loss.preset=classic"]).loss.beta == 0.7  # the recipe's own beta wins


@pytest.mark.parametrize("key", ["beta", "logp", "forget_weight"])
def test_npo_explicit_null_is_not_replaced_by_the_preset(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"override 'loss.{key}=null': key 'loss.{key}': .*\(got None\)"):
        load_config("npo_full", [f"loss.{key}=null"])


def test_override_may_not_switch_on_an_unset_section() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("sft_full", ["model.lora.r=4"])
    assert str(err.value) == ("override 'model.lora.r=4': model.lora is not set in sft_full; use sft_lora or set "
                              "model.lora={...}")
    with pytest.raises(ConfigError, match=r"model.lora is not set in base_full; set model.lora=\{\.\.\.\}$"):
        load_config("base_full", ["model.lora.alpha=32"])


def test_override_sets_a_whole_section_or_fills_one_with_defaults() -> None:
    lora = load_config("sft_full", ["model.lora={r: 4}"]).model.lora
    assert lora is not None and (lora.r, lora.alpha) == (4, 16)
    assert load_config("sft_lora", ["model.lora=null"]).model.lora is None
    # Sections with defaults exist in every recipe, written out or not: their keys are plain overrides.
    cfg = load_config("sft_full", ["tracking.mlflow=false", "data.synthetic.seed=3"])
    assert cfg.tracking.mlflow is False and cfg.data.synthetic.seed == 3


def test_rmu_trainable_must_be_a_regex() -> None:
    with pytest.raises(ConfigError, match=r"key 'loss.trainable': .*not a regular expression"):
        load_config("rmu_full", ["loss.trainable=(("])


def test_layer_is_checked_against_the_model_depth(tiny_path: Path) -> None:
    for recipe in ("rmu_full", "rmu_lora"):
        with pytest.raises(ConfigError) as err:
            check_against_model(load_untrained(recipe, ["loss.layer=4"]))
        assert str(err.value) == ("loss.layer=4 is out of range: the embedded model has 4 language-model layers "
                                  "(0..3)")
        check_against_model(load_untrained(recipe, ["loss.layer=3"]))
    with pytest.raises(ConfigError, match=r"loss.layer=2 .* 2 language-model layers \(0..1\)"):
        check_against_model(load_untrained("rmu_full", ["model.embedded.text_layers=2", "loss.layer=2"]))


def test_trainable_is_checked_against_parameter_names(tiny_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"loss.trainable='up_proj_x' matches no parameter of the embedded model "
                                          r"\(names look like 'model.language_model.layers.0."):
        check_against_model(load_untrained("rmu_full", ["loss.trainable=up_proj_x"]))
    # Under LoRA the names are PEFT's: adapter weights exist, the bare full-model names do not.
    check_against_model(load_untrained("rmu_lora", [r"loss.trainable=lora_B"]))
    with pytest.raises(ConfigError, match=r"names look like 'base_model.model.model.language_model.layers"):
        check_against_model(load_untrained("rmu_lora", [r"loss.trainable=^model\.language_model"]))


def test_recipes_dir_has_only_yaml() -> None:
    assert all(p.suffix == ".yaml" for p in RECIPES_DIR.iterdir())


def test_run_length_is_max_steps_or_epochs_and_a_later_layer_replaces_the_other(tmp_path: Path) -> None:
    assert (load_config("sft_lora").max_steps, load_config("sft_lora").epochs) == (40, None)
    assert (load_config("sft_lora", ["epochs=2"]).max_steps, load_config("sft_lora", ["epochs=2"]).epochs) == (None, 2)
    with pytest.raises(ConfigError, match=r"^overrides set both max_steps and epochs: set one of them$"):
        load_config("sft_lora", ["max_steps=3", "epochs=2"])
    both = tmp_path / "both.yaml"
    both.write_text(yaml.safe_dump({"inherit": "sft_full", "max_steps": 3, "epochs": 2}))
    with pytest.raises(ConfigError, match=r"both\.yaml: max_steps=3 and epochs=2 are both set: set one of them$"):
        load_config(str(both))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"inherit": "sft_full", "epochs": 2}))  # sft_full sets max_steps: 30
    assert (load_config(str(child)).max_steps, load_config(str(child)).epochs) == (None, 2)
    assert (load_config(str(child), ["max_steps=4"]).max_steps, load_config(str(child), ["max_steps=4"]).epochs) == (4, None)


def test_paper_scale_blocks_give_epochs_and_a_checkpoint_cadence() -> None:
    from mirage_ds.paper_scale import paper_scale, paper_scale_recipes

    lengths = {}
    for name in paper_scale_recipes():
        scale = paper_scale(name)
        assert "max_steps" not in scale.inputs, name
        cfg = load_config(name, scale.apply([f"{key}=/given" for key in scale.inputs]))
        assert cfg.max_steps is None and cfg.checkpoint.every > 0 and cfg.checkpoint.keep == 2, name
        lengths[name] = cfg.epochs
        # The user's max_steps replaces the block's epochs (a short trial of the paper's settings).
        trial = load_config(name, scale.apply([*(f"{key}=/given" for key in scale.inputs), "max_steps=2"]))
        assert (trial.max_steps, trial.epochs) == (2, None)
    # docs/paper-protocol.md, section 3: NPO full 1 epoch, NPO LoRA 10; the SFT baselines one epoch, as LLaVA's script.
    assert lengths == {name: 10 if name in ("npo_lora", "rmu_lora") else 1 for name in paper_scale_recipes()}
