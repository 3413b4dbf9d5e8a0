"""DeepSpeed JSON (the source of truth for ZeRO) with its ``"auto"`` fields filled from the recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mirage_ds.config import DS_CONFIGS_DIR, ConfigError, TrainConfig


def ds_config_path(cfg: TrainConfig) -> Path:
    path = Path(cfg.deepspeed)
    if not path.is_file():
        path = DS_CONFIGS_DIR / cfg.deepspeed
    if not path.is_file():
        available = ", ".join(sorted(p.name for p in DS_CONFIGS_DIR.glob("*.json")))
        raise ConfigError(f"deepspeed={cfg.deepspeed!r}: no such file (ds_configs/ has: {available})")
    return path


def _fill(node: Any, values: dict[str, Any], path: str, source: Path) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{path}.{k}" if path else k, source) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise ConfigError(f"{source}: {path!r} is 'auto' but the recipe sets no value for it")
        return values[path]
    return node


def build_ds_config(cfg: TrainConfig, world_size: int, hidden_size: int) -> dict[str, Any]:
    """Resolved DeepSpeed config; checks ``train_batch_size = micro x accum x world``."""
    source = ds_config_path(cfg)
    try:
        raw = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: invalid JSON ({err})") from None
    micro, accum = cfg.micro_batch_size, cfg.grad_accum
    values = {
        "train_batch_size": micro * accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16.enabled": cfg.model.dtype == "bf16",
        "fp16.enabled": cfg.model.dtype == "fp16",
        # Bucket sizes scale with the hidden size as in the HF DeepSpeed integration.
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.allgather_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
        # DeepSpeed's default, and LLaVA's zero3.json: a parameter used again within 1e9 elements stays gathered.
        "zero_optimization.stage3_max_reuse_distance": 1e9,
    }
    ds = _fill(raw, values, "", source)
    if world_size == 1:
        keep_one_rank_parameters(raw, ds)
    got = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    if got[0] != got[1] * got[2] * world_size:
        raise ConfigError(
            f"{source}: train_batch_size={got[0]} != micro {got[1]} x accum {got[2]} x world {world_size}"
        )
    return ds


# How many parameter elements one rank keeps gathered (a second copy beside the partition): 2**27 is 256 MiB in
# bf16, all of the embedded default and of the hub stand-in, a small part of a 7B model.
ONE_RANK_KEPT_ELEMENTS = 2**27


def keep_one_rank_parameters(raw: dict[str, Any], ds: dict[str, Any]) -> None:
    """One rank under ZeRO-3 keeps its parameters gathered (up to ``ONE_RANK_KEPT_ELEMENTS`` in all) and looks
    no step ahead before releasing the others, where the DeepSpeed JSON leaves those settings ``"auto"`` and
    offloads no parameters.

    Why: with one rank a partition is the whole tensor, so ZeRO-3's gather before every module and release
    after it copy each tensor to itself and back. A kept ("persistent") parameter skips both, and the
    arithmetic is the same: the embedded base's 600 steps gave bitwise the same weights, its first 80 steps
    in 71 instead of 140 CPU-seconds. Keeping a reused parameter gathered saves nothing either (a gather is a
    local copy), while deciding it scans the rest of the step's module trace at every release, up to
    ``stage3_max_reuse_distance`` elements: with many small modules, LoRA's above all, that scan is
    quadratic in the trace (the hub stand-in's paper-scale LoRA test: 53 s, 37 s without it). The budget
    bounds the second copy a kept parameter costs beside its partition. Not under ``offload_param``: kept
    parameters stay on the device, which is what offloading gives up."""
    zero = raw.get("zero_optimization", {})
    if zero_stage(ds) != 3 or "offload_param" in zero:
        return
    if zero.get("stage3_param_persistence_threshold") == "auto":
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = ONE_RANK_KEPT_ELEMENTS
        ds["zero_optimization"].setdefault("stage3_model_persistence_threshold", ONE_RANK_KEPT_ELEMENTS)
    if zero.get("stage3_max_reuse_distance") == "auto":
        ds["zero_optimization"]["stage3_max_reuse_distance"] = 0


def zero_stage(ds: dict[str, Any]) -> int:
    """The ZeRO stage a resolved DeepSpeed config asks for (0 when it has no ``zero_optimization``)."""
    return int(ds.get("zero_optimization", {}).get("stage", 0))
