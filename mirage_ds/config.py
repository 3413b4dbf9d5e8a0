"""Recipe YAML -> typed, frozen config. Fails loudly, naming the key, the file and what is allowed.

A recipe is ``recipes/NAME.yaml``; it may ``inherit`` another recipe (deep merge, the child wins).
Command-line overrides are dotted ``key=value`` pairs, values parsed as YAML (a scalar, or a mapping that
sets a whole section). Loss sections are defined in ``specs/losses.py``; nothing here imports torch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mirage_ds.atomic import write_text
from mirage_ds.resources import SOURCE_ROOT, shipped
from mirage_ds.specs.losses import LOSS_CONFIGS, LossConfig
from mirage_ds.specs.synthetic import SyntheticSpec

REPO_ROOT = SOURCE_ROOT
# The checkout's recipes/ and ds_configs/, or an installed wheel's copies (resources.py).
RECIPES_DIR = shipped("recipes")
DS_CONFIGS_DIR = shipped("ds_configs")


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
    # With no path: "pretrained" starts from the embedded base trained once from recipes/base_full.yaml
    # (models/pretrained.py; the launcher's build phase trains it); "random" from the untrained tiny model (the
    # base's own start; the test suite passes it explicitly, its pinned numbers are on that model).
    embedded_base: Literal["pretrained", "random"] = "pretrained"
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
    # LLaVA-1.5 trains at 2048 (model_max_length); one image alone takes 576 tokens there. The engine checks
    # the value against the model's image tokens before any rank starts (engine/preflight.py).
    max_length: int = Field(2048, gt=0)
    # LLaVA system prompt: vicuna_v1 ("curious user") trained LLaVA-1.5; llava_v1 ("human") is the paper's eval.
    template: Literal["vicuna_v1", "llava_v1"] = "vicuna_v1"
    pad_to_square: bool = True
    num_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(64, ge=1)
    on_error: Literal["raise", "skip"] = "raise"
    # Shards built without --images hold generated placeholder images (counted in their manifests); a
    # --paper-scale run refuses them unless this is set (launcher/run.py, engine/preflight.py).
    allow_placeholder_images: bool = False


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


class ExportConfig(Section):
    """The final export (``output_dir/export``): full fine-tuning writes ``model.path``'s key layout and files."""

    dtype: Literal["source", "fp32", "bf16", "fp16"] = "source"  # "source": each tensor in its checkpoint dtype


class TrackingConfig(Section):
    mlflow: bool = True  # the store is tracking/store.py's store_uri(): $MLFLOW_TRACKING_URI, else runs/mlflow.db
    experiment: str | None = None  # default: $MLFLOW_EXPERIMENT_NAME or "mirage-ds"
    retry_s: float = Field(15.0, gt=0)  # how often an unreachable server is retried


class EvalConfig(Section):
    """A slice of the safety eval on the live engine every ``every`` steps (engine/live_eval.py): ASR, RR and
    their degenerate shares before and after the one-word attack, logged as ``live/*`` step metrics."""

    every: int = Field(0, ge=0)  # optimizer steps between live evals; 0 = none
    limit: int = Field(8, gt=0)  # the first N originals and N attacked queries of each subset
    max_new_tokens: int = Field(32, gt=0)
    batch_size: int = Field(8, gt=0)
    # The paper's cases from a VLGuard directory and its images, or shards attacked with rule-based rewrites;
    # neither: the embedded corpus's eval set, which only fits runs on the embedded model and corpus.
    vlguard: str | None = None
    images: str | None = None
    data: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EvalConfig:
        if self.vlguard and self.data:
            raise ValueError("set one of eval.vlguard and eval.data")
        if self.vlguard and not self.images:
            raise ValueError("eval.vlguard needs eval.images (the directory holding VLGuard's image folders)")
        return self


class TrainConfig(Section):
    recipe: str = "unnamed"
    description: str = ""
    output_dir: str = "runs/default"
    # How long the run trains: optimizer steps, or whole epochs of the stream that defines an epoch for the loss
    # (resolved to max_steps before any rank trains, engine/resolution.py). Exactly one: a recipe, a child
    # recipe or the overrides that set one replace the other from the layers below (RUN_LENGTH).
    max_steps: int | None = Field(None, gt=0)  # 50 when neither is set
    epochs: int | None = Field(None, gt=0)
    seed: int = 0
    micro_batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    deepspeed: str = "zero3.json"  # file in ds_configs/ or a path
    log_every: int = Field(1, gt=0)
    resume: Literal["auto", "never"] = "never"
    # A step whose reduced loss or gradient norm is not finite is never applied. "stop": exit 4, the last
    # good checkpoint kept; "skip": drop that step's gradients, count it (train/skipped), go on, and stop
    # after ``nonfinite_max_skips`` skipped steps in a row.
    nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_max_skips: int = Field(3, gt=0)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    loss: LossConfig  # the class is picked by ``loss.name`` (specs/losses.py)

    @model_validator(mode="before")
    @classmethod
    def _default_run_length(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_steps") is None and data.get("epochs") is None:
            return {**data, "max_steps": 50}
        return data

    @model_validator(mode="after")
    def _one_run_length(self) -> TrainConfig:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError(f"max_steps={self.max_steps} and epochs={self.epochs} are both set: set one of them")
        return self

    @model_validator(mode="after")
    def _lora_targets(self) -> TrainConfig:
        if self.model.lora is not None and not self.model.lora.target_modules:
            raise ValueError("model.lora.target_modules is empty")
        return self

    @model_validator(mode="after")
    def _live_eval_data(self) -> TrainConfig:
        real = ["model.path"] if self.model.path else []
        real += [f"data.{name}" for name in ("train", "forget", "retain") if getattr(self.data, name)]
        if self.eval.every and real and not (self.eval.vlguard or self.eval.data):
            raise ValueError(f"eval.every on a run that sets {', '.join(real)} needs eval.vlguard (+ eval.images) or "
                             "eval.data: the embedded synthetic eval set would measure nothing it learns")
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
    """``recipes/NAME.yaml``, or ``name`` itself when it is a YAML file."""
    path = Path(name)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(list_recipes())
        raise ConfigError(f"unknown recipe {name!r}: no {path} (available: {available})")
    return path


def list_recipes() -> list[str]:
    """Names of the shipped recipes (files starting with ``_`` are fragments, not recipes)."""
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
    """The recipe's raw mapping with ``inherit`` chains resolved; ``recipe`` set to the recipe's name: the
    file's name, unless the file names it itself (a run's saved ``config.yaml``, see ``save_config``)."""
    path = recipe_path(name)
    if path.stem in _seen:
        raise ConfigError(f"{path}: inherit cycle {' -> '.join((*_seen, path.stem))}")
    data = _load_yaml(path)
    data.pop("paper_scale", None)  # the recipe's own paper-scale overrides, not config (mirage_ds/paper_scale.py)
    data.pop("resolved", None)  # a saved config.yaml's record of what ran (save_config), not config
    recipe = data.get("recipe", path.stem)  # read before the merge: a parent's name is not the child's
    parent = data.pop("inherit", None)
    if parent is not None:
        data = _deep_merge(replace_run_length(load_recipe_dict(parent, (*_seen, path.stem)), data), data)
    data["recipe"] = recipe
    return data


# The two ways to say how long a run trains; a layer that sets one replaces the other from the layers below.
RUN_LENGTH = ("max_steps", "epochs")


def replace_run_length(lower: dict[str, Any], upper: dict[str, Any] | set[str]) -> dict[str, Any]:
    """``lower`` (a parent recipe, or the recipe under the overrides) without ``max_steps``/``epochs`` when
    ``upper`` sets the other: a child recipe with ``epochs`` drops its parent's ``max_steps``. An ``upper`` that
    sets both is left for validation to reject."""
    given = [key for key in RUN_LENGTH if key in upper]
    if len(given) != 1:
        return lower
    return {key: value for key, value in lower.items() if key not in RUN_LENGTH or key == given[0]}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with dotted ``key=value`` overrides applied; values are parsed as YAML scalars or mappings.

    An override may fill keys of any section, but it may not switch on an optional section the recipe
    leaves unset (``model.lora.r=4`` on a full fine-tuning recipe would silently turn it into LoRA):
    that takes the section as a whole, ``model.lora={r: 4}``, or a recipe that sets it.
    """
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
        schema: type[BaseModel] | None = TrainConfig
        for depth, part in enumerate(parts[:-1]):
            field = schema.model_fields.get(part) if schema is not None else None
            sections = _section_classes(field.annotation) if field is not None else []
            if node.get(part) is None and sections and field is not None and field.default is None:
                raise ConfigError(f"override {item!r}: {_unset_section(data, '.'.join(parts[: depth + 1]))}")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            schema = sections[0] if len(sections) == 1 else None
        node[parts[-1]] = value
    return out


def _section_classes(annotation: Any) -> list[type[BaseModel]]:
    """The config classes a field holds (``LoraSpec`` for ``LoraSpec | None``; the loss classes for ``loss``)."""
    return [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]


def _unset_section(data: dict[str, Any], dotted: str) -> str:
    """The error for an override into an unset optional section, naming recipes of the same family that set it."""
    recipe = data.get("recipe", "this recipe")
    family = str(recipe).rsplit("_", 1)[0]
    setting = [name for name in list_recipes()
               if name != recipe and name.rsplit("_", 1)[0] == family and _dotted_get(load_recipe_dict(name), dotted) is not None]
    use = f"use {' or '.join(setting)} or " if setting else ""
    return f"{dotted} is not set in {recipe}; {use}set {dotted}={{...}}"


def _dotted_get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the config classes along ``loc`` to list the keys allowed where an error occurred."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        field = current.model_fields.get(part) if current is not None else None
        candidates = _section_classes(field.annotation) if field is not None else []
        if len(candidates) != 1:
            return []
        current = candidates[0]
    return sorted(current.model_fields) if current is not None else []


def _explain(err: ValidationError, source: Path, overrides: list[str]) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    allowed: list[str] = []
    if loc[:1] == ("loss",) and len(loc) > 1 and loc[1] in LOSS_CONFIGS:
        # Errors inside the loss union carry the ``name`` tag in their location: loss.<name>.<key>.
        allowed = sorted(LOSS_CONFIGS[loc[1]].model_fields)
        loc = loc[:1] + loc[2:]
    elif first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "name")
    key = ".".join(str(p) for p in loc)
    if first["type"] == "value_error" and not loc:  # a check across sections: its message says it all
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    # The override that set this key, a section above it (model.lora={...}) or a key below it.
    culprits = [o for o in overrides if "=" in o and _related(o.split("=", 1)[0], key)]
    origin = f"override {culprits[-1]!r}" if culprits else str(source)
    registered = ", ".join(sorted(LOSS_CONFIGS))
    if first["type"] == "union_tag_invalid":
        return f"{origin}: key {key!r}: unknown loss {first['ctx']['tag']!r} (registered: {registered})"
    if first["type"] == "union_tag_not_found":
        return f"{origin}: key {key!r} is required (a registered loss: {registered})"
    if first["type"] == "extra_forbidden":
        allowed = allowed or _allowed_keys(TrainConfig, loc)
        return f"{origin}: unknown key {key!r} (allowed here: {', '.join(allowed)})"
    value = first.get("input")
    return f"{origin}: key {key!r}: {first['msg']} (got {value!r})"


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def load_config(name: str, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe ``name`` (or a YAML path) with its ``inherit`` chain and ``overrides`` applied, validated.

    Raises ``ConfigError`` with one line naming the key, where it came from (file or override) and what
    is allowed. Imports no torch: any process can validate a recipe cheaply.
    """
    overrides = list(overrides or [])
    source = recipe_path(name)
    given = {item.split("=", 1)[0] for item in overrides if "=" in item}
    if set(RUN_LENGTH) <= given:
        raise ConfigError(f"overrides set both {' and '.join(RUN_LENGTH)}: set one of them")
    data = apply_overrides(replace_run_length(load_recipe_dict(name), given), overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, source, overrides)) from None


def save_config(cfg: TrainConfig, path: Path, resolved: dict[str, Any] | None = None) -> None:
    """The resolved config as YAML, written atomically; ``load_config(path)`` reads it back as the same
    config, recipe name included. ``resolved``: what the run resolved its requests to (epochs to steps, the
    attention implementation that ran), written as a ``resolved`` block that loading skips."""
    text = yaml.safe_dump({**cfg.model_dump(mode="json"), **({"resolved": resolved} if resolved else {})}, sort_keys=False)
    write_text(path, text)


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
