"""Distributed special cases, one named function each, each saying why it exists."""

from __future__ import annotations

import os
from pathlib import Path
from contextlib import contextmanager
from collections.abc import Callable
from typing import Any, Iterator, TypeVar

import torch
import torch.distributed as dist

from mirage_ds.engine.ds_config import zero_stage

T = TypeVar("T")


def init_distributed() -> tuple[int, int]:
    """(rank, world_size). gloo on CPU, nccl on CUDA; a plain `python launcher/run.py` is a world of 1."""
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    name_the_local_size()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    unlink_shm_buffers()
    return dist.get_rank(), dist.get_world_size()


def name_the_local_size() -> None:
    """Set LOCAL_SIZE, the ranks on this node, where DeepSpeed's launcher has not (a plain `python
    launcher/run.py`, a world of one; torchrun, which says LOCAL_WORLD_SIZE).

    Without it DeepSpeed's CPU accelerator answers ``device_count()`` by running `numactl --hardware`, and
    ZeRO-3 asks once per gradient bucket it reduces: 41 processes per step of the tiny model (profiled), about
    24,600 over the pretrained base's 600 steps. A launcher this cannot read (mpirun) is left to DeepSpeed.
    """
    if "LOCAL_SIZE" in os.environ:
        return
    local = os.environ.get("LOCAL_WORLD_SIZE") or ("1" if os.environ["WORLD_SIZE"] == "1" else None)
    if local is not None:
        os.environ["LOCAL_SIZE"] = local


def unlink_shm_buffers() -> None:
    """Remove the names of DeepSpeed's CPU shared-memory all-reduce buffers once every rank has mapped them.

    DeepSpeed's CPU backend creates /dev/shm/deepspeed_allreduce_buffer_*_<addr>_<port>_<rank> (69 MB per
    rank) and never unlinks them: run after run they fill /dev/shm (and so RAM) until the OOM killer
    strikes. After the barrier all peers hold their mappings, which outlive the unlinked names.
    """
    dist.barrier()
    pattern = f"deepspeed_allreduce_buffer_*_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{dist.get_rank()}"
    for path in Path("/dev/shm").glob(pattern):
        path.unlink(missing_ok=True)


def teardown_distributed(clean: bool) -> None:
    """Barrier, then destroy the process group.

    Without the barrier, gloo ranks that exit while a peer is still tearing down its pairs sometimes
    abort with SIGABRT ("terminate called without an active exception"). After an error the barrier is
    skipped: the failed peer may never arrive, and waiting would hang for the gloo timeout.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def local_rank_zero_first(build: Callable[[], T]) -> T:
    """Run ``build`` on each node's local rank 0 first, then on the other ranks (which find it cached).

    Cached artefacts (the embedded model, the synthetic corpus) are built once per node instead of by
    every rank racing on the same directory; the file lock inside each builder still guards separate jobs.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank == 0:
        result = build()
    dist.barrier()
    if local_rank != 0:
        result = build()
    return result


def import_model_modules(model_path: Path) -> None:
    """Import the modeling module of the checkpoint's model and of each of its sub-models (LLaVA: Llama, CLIP).

    Why, before any ``zero.Init``: ``zero.Init`` wraps ``__init__`` of every nn.Module subclass, including
    classes *created* while it is active (through ``Module.__init_subclass__``), and on exit puts back the
    ``__init__`` it first saw. transformers imports a sub-model's module lazily, inside ``from_pretrained``,
    so under ZeRO-3 ``LlamaAttention`` is created inside ``zero.Init``; transformers >= 5.25 then decorates
    it with kernels' ``use_kernelized_func``, which replaces ``__init__`` after class creation (the new one
    sets ``_kernel_funcs``). ``zero.Init``'s exit restores the undecorated ``__init__``, so every model built
    later in the process (the full-FT reference engine, an export reload) lacks ``_kernel_funcs`` and its
    forward raises AttributeError. Imported here first, the classes exist before ``zero.Init`` patches them.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    for sub in [config, *(getattr(config, key) for key in getattr(config, "sub_configs", {}))]:
        if type(sub) in MODEL_MAPPING:
            MODEL_MAPPING[type(sub)]  # the lookup imports the module that defines the class


@contextmanager
def zero3_construction(ds_config: dict[str, Any], model_path: Path) -> Iterator[None]:
    """Keep an ``HfDeepSpeedConfig`` alive while the model at ``model_path`` is loaded.

    With it, ``from_pretrained`` builds ZeRO-3 models partitioned (``zero.Init``) instead of materialising
    the full model on every rank first: the difference between 14 GB per rank and 14 GB / world for 7B.
    The model's modules are imported first (``import_model_modules`` says why).
    """
    from transformers.integrations import HfDeepSpeedConfig

    import_model_modules(model_path)
    keep = HfDeepSpeedConfig(ds_config) if zero_stage(ds_config) == 3 else None
    try:
        yield
    finally:
        del keep
