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
    }
    ds = _fill(raw, values, "", source)
    got = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    if got[0] != got[1] * got[2] * world_size:
        raise ConfigError(
            f"{source}: train_batch_size={got[0]} != micro {got[1]} x accum {got[2]} x world {world_size}"
        )
    return ds


def zero_stage(ds: dict[str, Any]) -> int:
    """The ZeRO stage a resolved DeepSpeed config asks for (0 when it has no ``zero_optimization``)."""
    return int(ds.get("zero_optimization", {}).get("stage", 0))
