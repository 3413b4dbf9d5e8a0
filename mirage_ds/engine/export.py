"""The final export: weights other tools load the way they load ``model.path`` itself.

Full fine-tuning writes the source checkpoint's layout: its key names (llava-hf's ``language_model.model.*``,
not the module names transformers 5 renames them to on load), its shard files and index, each tensor in its
source dtype unless ``export.dtype`` names one, beside a verbatim copy of every other file of ``model.path``
(tokenizer, processor, chat template, generation config). ``config.json`` is copied as well and rewritten
only where it records a dtype that ``export.dtype`` changes. LoRA writes the PEFT adapter with the same
files (but no ``config.json``: the directory is an adapter, not a model); ``merge_lora_export`` turns it into
a full export (``mirage-ds export RUN --merge``; ``mirage-ds export RUN`` says what an export holds).

Every export is written into a temporary directory beside its target and renamed into place
(``mirage_ds.atomic``): a reader never sees half an export, and a merge replaces an existing directory only
when told to (``--overwrite``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import AutoConfig, LlavaForConditionalGeneration, PreTrainedModel

from mirage_ds.atomic import atomic_dir
from mirage_ds.config import ConfigError, TrainConfig
from mirage_ds.models.loading import DTYPES, adapter_base, dtype_name

INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
# safetensors header dtype -> torch (the ones a LLaVA checkpoint holds).
HEADER_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
CONFIG_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class WeightLayout:
    """How a checkpoint stores its tensors: each safetensors file's keys in file order, each key's dtype,
    and whether an index maps keys to files."""

    files: dict[str, list[str]]
    dtypes: dict[str, torch.dtype]
    indexed: bool

    @property
    def keys(self) -> list[str]:
        return [key for keys in self.files.values() for key in keys]


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def _header(path: Path) -> dict[str, Any]:
    """A safetensors file's JSON header (8-byte little-endian length, then JSON): keys, dtypes, offsets."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


def read_layout(path: Path) -> WeightLayout:
    """The weight layout of checkpoint directory ``path``, read from headers (no tensor is loaded)."""
    index = path / INDEX
    if index.is_file():
        files = list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ConfigError(f"model.path={str(path)!r}: no safetensors weights (model.safetensors or {INDEX}); the "
                          "export writes the source's layout and reads no pickle")
    keys: dict[str, list[str]] = {}
    dtypes: dict[str, torch.dtype] = {}
    for name in files:
        header = {k: v for k, v in _header(path / name).items() if k != "__metadata__"}
        keys[name] = list(header)
        for key, info in header.items():
            if info["dtype"] not in HEADER_DTYPES:
                raise ConfigError(f"model.path={str(path)!r}: {name} holds {key} as {info['dtype']}; the export "
                                  f"writes {', '.join(HEADER_DTYPES)} only")
            dtypes[key] = HEADER_DTYPES[info["dtype"]]
    return WeightLayout(keys, dtypes, index.is_file())


def source_names(model: PreTrainedModel, layout: WeightLayout) -> dict[str, str]:
    """Parameter name of ``model`` -> the checkpoint key it was loaded from.

    Replays the renaming ``from_pretrained`` applies on load (transformers' conversion mapping for the
    model class) on each checkpoint key, so the export writes back exactly the keys it read. ``model`` may
    live on the meta device. Raises ``ConfigError`` when a key is converted (not just renamed) on load or
    a parameter has no key: such a layout cannot be written back as it was.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    state = model.state_dict()
    names: dict[str, str] = {}
    for key in layout.keys:
        name, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, state)
        if converted is not None or name not in state:
            raise ConfigError(f"checkpoint key {key!r} is not a parameter of {type(model).__name__} after renaming "
                              f"({name!r}): the export cannot write this layout back")
        names[name] = key
    unsaved = sorted(set(state) - set(names) - set(model.all_tied_weights_keys))
    if unsaved:
        raise ConfigError(f"{len(unsaved)} parameters have no checkpoint key (e.g. {unsaved[0]!r}): the export cannot "
                          "write this layout back")
    return names


def _config_with_dtype(text: str, dtype: torch.dtype) -> str:
    """``config.json`` with each recorded dtype (``torch_dtype`` / ``dtype``, also in sub-configs) set to ``dtype``."""

    def update(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: CONFIG_DTYPE_NAMES[dtype] if k in ("torch_dtype", "dtype") and isinstance(v, str) else update(v)
                    for k, v in node.items()}
        return node

    return json.dumps(update(json.loads(text)), indent=2) + "\n"


def copy_side_files(source: Path, out_dir: Path, with_config: bool) -> None:
    """Every file of ``source`` that holds no weights, byte for byte (not hidden files, not folders)."""
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not is_weight_file(path.name):
            if with_config or path.name != "config.json":
                shutil.copyfile(path, out_dir / path.name)


def write_full_export(state: dict[str, torch.Tensor], source: Path, out_dir: Path, dtype: str) -> None:
    """Write ``state`` (module parameter names) into ``out_dir`` in ``source``'s layout and files.

    ``dtype``: ``export.dtype``; "source" keeps each tensor's checkpoint dtype. ``config.json`` is copied
    verbatim unless a named dtype differs from what it records.
    """
    layout = read_layout(source)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    with torch.device("meta"):
        names = source_names(LlavaForConditionalGeneration(config), layout)
    key_to_name = {key: name for name, key in names.items()}
    target = None if dtype == "source" else DTYPES[dtype]
    weight_map: dict[str, str] = {}
    total = 0
    for file, keys in layout.files.items():
        tensors = {key: state[key_to_name[key]].to(target or layout.dtypes[key]).contiguous() for key in keys}
        save_file(tensors, str(out_dir / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map |= dict.fromkeys(keys, file)
    if layout.indexed:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    copy_side_files(source, out_dir, with_config=True)
    if target is not None and any(d != target for d in layout.dtypes.values()):
        (out_dir / "config.json").write_text(_config_with_dtype((source / "config.json").read_text(), target))


def consolidated_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Full state dict on rank 0 (None elsewhere), in the training dtype. Collective under ZeRO-3.

    ZeRO-3 parameters are partitioned (numel 0 locally), so ``module.state_dict()`` would be empty;
    DeepSpeed gathers them (``stage3_gather_16bit_weights_on_model_save``; despite the name the tensors keep
    the training dtype).
    """
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if dist.get_rank() == 0 else None
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()} if dist.get_rank() == 0 else None


def export_model(engine: Any, source: Path, export_dir: Path, cfg: TrainConfig) -> None:
    """Collective. Writes ``export_dir`` atomically: the source's layout (full) or a PEFT adapter (LoRA). The
    run's own previous export (a finished run resumed to train further) is replaced."""
    state = consolidated_state_dict(engine)
    if dist.get_rank() == 0:
        with atomic_dir(export_dir, overwrite=True) as tmp:
            if cfg.model.lora is None:
                write_full_export(state, source, tmp, cfg.export.dtype)
            else:
                _write_adapter(engine.module, state, source, tmp)
    dist.barrier()


def _write_adapter(module: Any, state: dict[str, torch.Tensor], source: Path, out_dir: Path) -> None:
    copy_side_files(source, out_dir, with_config=False)
    module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    # The adapter needs its base: record where it is and, for a small base (the embedded model), ship a copy.
    info = {"base_model": str(source.resolve())}
    if sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) < 2**28:
        shutil.copytree(source, out_dir / "base")
        info["base_copy"] = "base"
    (out_dir / "base_model.json").write_text(json.dumps(info, indent=2))


def describe_export(export_dir: Path) -> str:
    """One line on what ``export_dir`` holds, checked from its files (safetensors headers; no tensor is loaded):
    a full checkpoint (architecture, tensors, files, dtypes, size) or a LoRA adapter (rank, alpha, targets, and
    its base). Raises ``ConfigError`` when it holds neither, or when an adapter's weights or base are missing."""
    if (export_dir / "adapter_config.json").is_file():
        adapter = json.loads((export_dir / "adapter_config.json").read_text())
        weights, base = export_dir / "adapter_model.safetensors", adapter_base(export_dir)
        if not weights.is_file():
            raise ConfigError(f"{export_dir}: LoRA adapter without {weights.name}")
        if not (base / "config.json").is_file():
            raise ConfigError(f"{export_dir}: LoRA adapter whose base {base} has no config.json (moved or deleted?)")
        targets = adapter["target_modules"]
        targets = targets if isinstance(targets, str) else ",".join(sorted(targets))
        tensors = len([key for key in _header(weights) if key != "__metadata__"])
        return (f"{export_dir}: LoRA adapter, r {adapter['r']}, alpha {adapter['lora_alpha']}, targets {targets}, "
                f"{tensors} tensors; base {base}")
    if (export_dir / "config.json").is_file():
        layout = read_layout(export_dir)
        architecture = (json.loads((export_dir / "config.json").read_text()).get("architectures") or ["?"])[0]
        dtypes = ", ".join(sorted({dtype_name(dtype) for dtype in layout.dtypes.values()}))
        size = sum((export_dir / name).stat().st_size for name in layout.files)
        return (f"{export_dir}: full checkpoint, {architecture}, {len(layout.keys)} tensors in {len(layout.files)} "
                f"safetensors files, {dtypes}, {size / 2**30:.2f} GiB")
    raise ConfigError(f"{export_dir}: no export (neither a checkpoint's config.json nor a LoRA adapter_config.json)")


def merge_lora_export(adapter_dir: Path, out_dir: Path, dtype: str, device: str = "cpu", overwrite: bool = False) -> None:
    """A full export of the LoRA export ``adapter_dir`` merged into its base, in the base's layout and files.

    Merged in fp32 on ``device`` (W + s·BA rounded once, to the export dtype), then written like a full
    fine-tuning export. An existing ``out_dir`` is replaced only with ``overwrite`` (else ``FileExistsError``,
    before anything is loaded).
    """
    from peft import PeftModel

    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: no LoRA adapter (adapter_config.json) to merge; a full fine-tuning "
                          "export is already a checkpoint")
    base = adapter_base(adapter_dir)
    model = LlavaForConditionalGeneration.from_pretrained(base, local_files_only=True, dtype=torch.float32).to(device)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_full_export(merged.state_dict(), base, tmp, dtype)
