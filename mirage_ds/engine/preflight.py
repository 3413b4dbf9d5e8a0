"""The config checked against the model it names, before any distributed work.

``load_config`` validates a recipe without the model; what only the model (or the machine) can answer is
checked here: whether one image fits ``data.max_length``, whether the engine can train ``model.dtype`` with
the DeepSpeed file, how deep the language model is, which parameter names a ``trainable`` pattern matches,
and whether the export can write the checkpoint's key layout back. Without it these fail at the first step
or at the export, as a traceback on every rank (a mixed-dtype model, for one, as a bare ``AssertionError``
inside DeepSpeed). ``check_data`` checks the data the loss reads: every stream given once anything real is
named (or a real model trains on the synthetic corpus without a word), no placeholder images at paper scale.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch
from transformers import AutoConfig, LlavaForConditionalGeneration

from mirage_ds.config import ConfigError, TrainConfig
from mirage_ds.data.corpus import DATA_KEYS, check_streams, placeholder_images
from mirage_ds.engine.ds_config import ds_config_path
from mirage_ds.engine.export import read_layout, source_names
from mirage_ds.losses.registry import build_loss
from mirage_ds.models.adapters import apply_lora
from mirage_ds.models.loading import DTYPES, image_token_count, resolve_model_path

# model.dtype -> the DeepSpeed section that trains in it (fp32 enables neither).
DS_DTYPE_SECTIONS = {"bf16": "bf16", "fp16": "fp16"}


def check_against_model(cfg: TrainConfig) -> None:
    """Raise ``ConfigError`` (one line) when the config does not fit the model it names or the engine.

    Reads only the checkpoint's config and safetensors headers: parameter names come from the model built
    on the meta device (no weights, no memory), wrapped by PEFT under LoRA exactly as the training run wraps it.
    """
    check_dtype(cfg)
    check_extension_lock()
    path = resolve_model_path(cfg.model)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model_name = f"model.path={cfg.model.path!r}" if cfg.model.path else "the embedded model"
    n_image = image_token_count(config)
    if cfg.data.max_length <= n_image:
        raise ConfigError(f"data.max_length={cfg.data.max_length} leaves no room for text: one image of {model_name} "
                          f"takes {n_image} tokens, so data.max_length must be at least {n_image + 1}")
    needs = build_loss(cfg.loss, cfg.model).needs
    depth = config.text_config.num_hidden_layers
    if needs.hooked_layer is not None and not 0 <= needs.hooked_layer < depth:
        raise ConfigError(f"loss.layer={needs.hooked_layer} is out of range: {model_name} has {depth} language-model "
                          f"layers (0..{depth - 1})")
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    source_names(model, read_layout(path))
    if needs.trainable is not None:
        names = parameter_names(model, cfg)
        if not any(re.search(needs.trainable, name) for name in names):
            example = next((name for name in names if "language_model.layers." in name), names[0])
            raise ConfigError(f"loss.trainable={needs.trainable!r} matches no parameter of {model_name} "
                              f"(names look like {example!r})")


def check_data(cfg: TrainConfig, paper_scale: bool = False) -> None:
    """Raise ``ConfigError`` (one line) when a run that names a real input leaves a stream its loss reads unset
    (``data.corpus.check_streams``), or, under ``--paper-scale``, when its shards hold generated placeholder
    images (counted in their manifests) and ``data.allow_placeholder_images`` is not set. Reads manifests only."""
    streams = build_loss(cfg.loss, cfg.model).needs.streams
    check_streams(cfg, streams)
    if not paper_scale or cfg.data.allow_placeholder_images:
        return
    given = {name: Path(getattr(cfg.data, name)) for name in DATA_KEYS if name in streams and getattr(cfg.data, name)}
    counts = placeholder_images(given)
    if counts:
        held = ", ".join(f"{key} ({n} samples)" for key, n in counts.items())
        raise ConfigError(f"--paper-scale: the shards of {held} hold generated placeholder images, not the real ones "
                          "(built without --images): rebuild them with --images DIR, or set data.allow_placeholder_images=true")


def check_dtype(cfg: TrainConfig) -> None:
    """``model.dtype`` must be one this machine's accelerator trains and agree with the DeepSpeed file's
    ``bf16`` / ``fp16`` sections (``"auto"`` follows ``model.dtype``)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = [name for name, dtype in DTYPES.items() if dtype in accelerator.supported_dtypes()]
    if cfg.model.dtype not in supported:
        raise ConfigError(f"model.dtype={cfg.model.dtype}: DeepSpeed's {accelerator.device_name()} accelerator here "
                          f"cannot train it (supported: {', '.join(supported)})")
    source = ds_config_path(cfg)
    try:
        ds = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}: invalid JSON ({err})") from None
    for dtype, section in DS_DTYPE_SECTIONS.items():
        enabled = ds.get(section, {}).get("enabled", False)
        if enabled != "auto" and bool(enabled) != (cfg.model.dtype == dtype):
            raise ConfigError(f"model.dtype={cfg.model.dtype} but {source} sets {section}.enabled={json.dumps(enabled)}: "
                              f"set model.dtype={dtype if enabled else 'fp32'} or {section}.enabled to \"auto\"")


# DeepSpeed JIT-builds its CPU all-reduce op (``deepspeed_shm_comm``) at the first launch under a venv; here
# that takes about a minute. A lock far older than that was left by a build that was killed.
SHM_OP = "deepspeed_shm_comm"
STALE_LOCK_S = 600


def check_extension_lock() -> None:
    """Fail on a stale build lock of DeepSpeed's shm op instead of hanging on it.

    torch's JIT build holds ``<build dir>/lock`` while it compiles and removes it when done; a build killed
    mid-way (a Ctrl-C or a SIGKILL during the first launch) leaves it behind, and every later launch, from
    any checkout, then waits on it forever without a word (torch's ``FileBaton.wait``). Only the CPU
    backend builds the op.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    from torch.utils.cpp_extension import _get_build_directory  # torch's own layout of the build root

    lock = Path(_get_build_directory(SHM_OP, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        raise ConfigError(f"{lock} is {age / 60:.0f} minutes old: a build of DeepSpeed's {SHM_OP} op was killed "
                          f"mid-way and every launch would wait on it forever; remove it (rm {lock}) unless a build "
                          "is still running")


def parameter_names(model: torch.nn.Module, cfg: TrainConfig) -> list[str]:
    """The names ``named_parameters()`` gives the training model (PEFT-prefixed under LoRA)."""
    if cfg.model.lora is not None:
        with torch.device("meta"):
            model = apply_lora(model, cfg.model)
    return [name for name, _ in model.named_parameters()]
