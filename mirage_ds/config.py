"""Recipe YAML -> typed, frozen config. Fails loudly, naming the key, the file and what is allowed.

A recipe is ``recipes/NAME.yaml``; it may ``inherit`` another recipe (deep merge, the child wins).
Command-line overrides are dotted ``key=value`` pairs, values parsed as YAML scalars.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mirage_ds.data.synthetic import SyntheticSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
DS_CONFIGS_DIR = REPO_ROOT / "ds_configs"


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelSpec(Section):
    """The embedded default: a LLaVA-architecture model small enough to train on 2 CPU cores."""

    seed: int = 0
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256
    vocab_size: int = 1024
    max_position: int = 1024


class LoraSpec(Section):
    """PEFT LoRA on the language model. Paper preset: r 128, alpha 256."""

    r: int = Field(8, gt=0)
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(Section):
    path: str | None = None  # HF LLaVA checkpoint dir (e.g. /models/llava-1.5-7b-hf); None = embedded tiny model
    embedded: TinyModelSpec = TinyModelSpec()
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraSpec | None = None
    train_projector: bool = True


class DataConfig(Section):
    """Shard directories (see mirage_ds/data/schema.py). Unset = built from the embedded synthetic corpus."""

    train: str | None = None
    # With no ``train`` dir, which part of the synthetic corpus the train stream reads: "sft" (safe answers
    # mixed with refusals: Mixed-/Posthoc-SFT), "retain" (safe data only: Unsafe-Filter) or "base" (safe
    # answers and the harmful payload answers: an instruction-tuned base that complies with everything).
    synthetic_train: Literal["sft", "retain", "base"] = "sft"
    forget: str | None = None
    retain: str | None = None
    synthetic: SyntheticSpec = SyntheticSpec()
    max_length: int = Field(512, gt=0)
    pad_to_square: bool = True
    num_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(64, ge=1)
    on_error: Literal["raise", "skip"] = "raise"


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0)
    projector_lr: float | None = None  # paper LoRA preset: mm_projector_lr 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    grad_clip: float = 1.0


class CheckpointConfig(Section):
    every: int = Field(0, ge=0)  # optimizer steps between DeepSpeed checkpoints; 0 = only at the end
    keep: int = Field(2, ge=1)


class TrackingConfig(Section):
    mlflow: bool = True  # MLFLOW_TRACKING_URI, else sqlite:///<runs dir>/mlflow.db
    experiment: str | None = None  # default: $MLFLOW_EXPERIMENT_NAME or "mirage-ds"
    retry_s: float = Field(15.0, gt=0)  # how often an unreachable server is retried


class LossConfig(Section):
    """Base of every loss's config; the registry maps ``name`` to the concrete class."""

    name: str


class TrainConfig(Section):
    recipe: str = "unnamed"
    description: str = ""
    output_dir: str = "runs/default"
    max_steps: int = Field(50, gt=0)
    seed: int = 0
    micro_batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    deepspeed: str = "zero3.json"  # file in ds_configs/ or a path
    log_every: int = Field(1, gt=0)
    resume: Literal["auto", "never"] = "never"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    loss: LossConfig

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_from_registry(cls, value: Any) -> LossConfig:
        from mirage_ds.losses.registry import loss_config_class

        if isinstance(value, LossConfig):
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise ValueError("expected a mapping with a 'name' (a registered loss)")
        return loss_config_class(value["name"]).model_validate(value)

    @model_validator(mode="after")
    def _lora_targets(self) -> TrainConfig:
        if self.model.lora is not None and not self.model.lora.target_modules:
            raise ValueError("model.lora.target_modules is empty")
        return self


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(list_recipes())
        raise ConfigError(f"unknown recipe {name!r}: no {path} (available: {available})")
    return path


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_recipe_dict(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe's raw mapping with ``inherit`` chains resolved; ``recipe`` set to the recipe's name."""
    path = recipe_path(name)
    if path.stem in _seen:
        raise ConfigError(f"{path}: inherit cycle {' -> '.join((*_seen, path.stem))}")
    data = _load_yaml(path)
    parent = data.pop("inherit", None)
    if parent is not None:
        data = _deep_merge(load_recipe_dict(parent, (*_seen, path.stem)), data)
    data["recipe"] = path.stem
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the config classes along ``loc`` to list the keys allowed where an error occurred."""
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        current = candidates[0]
    return sorted(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _explain(err: ValidationError, source: Path, overrides: list[str], loss_name: str | None) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    override_keys = {o.split("=", 1)[0]: o for o in overrides if "=" in o}
    origin = f"override {override_keys[key]!r}" if key in override_keys else str(source)
    if first["type"] == "extra_forbidden":
        if loc and loc[0] == "loss" and loss_name:
            from mirage_ds.losses.registry import loss_config_class

            allowed = sorted(loss_config_class(loss_name).model_fields)
        else:
            allowed = _allowed_keys(TrainConfig, loc)
        return f"{origin}: unknown key {key!r} (allowed here: {', '.join(allowed)})"
    value = first.get("input")
    return f"{origin}: key {key!r}: {first['msg']} (got {value!r})"


def load_config(name: str, overrides: list[str] | None = None) -> TrainConfig:
    overrides = list(overrides or [])
    source = recipe_path(name)
    data = apply_overrides(load_recipe_dict(name), overrides)
    loss = data.get("loss")
    loss_name = loss.get("name") if isinstance(loss, dict) else None
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, source, overrides, loss_name)) from None
    except KeyError as err:  # unknown loss name from the registry
        raise ConfigError(f"{source}: key 'loss.name': {err.args[0]}") from None


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of the config (for tracker params)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
