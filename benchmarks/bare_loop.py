"""The baseline of ``overhead.py``: a bare DeepSpeed loop over the recipe's model, batch, ZeRO config and
optimizer, with no tracker, no streamer, no checkpoint and no per-step metrics.

    deepspeed --num_gpus N benchmarks/bare_loop.py --recipe sft_lora --steps 60 [dotted.key=value ...]

The recipe is read only for its sizes (model, micro batch, ZeRO JSON) and its optimizer: the framework's
AdamW parameter groups (``build_optimizer``: the recipe's learning rates and weight decay; a bare
``AdamW(params, lr)`` would add torch's default weight decay of 0.01 and drop LoRA's projector rate).
The model trains in train mode, as the framework's does. The batches are this
rank's first ``--steps`` batches of the recipe's train stream (same shards, seed and order as the
framework's run), collated into memory before the loop starts, so the loop times the model and DeepSpeed
alone. Rank 0 prints one ``step K`` line per step (flushed), which ``overhead.py`` timestamps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from mirage_ds.config import load_config  # noqa: E402
from mirage_ds.data.corpus import resolve_streams  # noqa: E402
from mirage_ds.data.preprocess import Preprocessor  # noqa: E402
from mirage_ds.data.streamer import Batches, ShardStream, collate_padded  # noqa: E402
from mirage_ds.data.template import Template  # noqa: E402
from mirage_ds.engine.distributed import init_distributed, zero3_construction  # noqa: E402
from mirage_ds.engine.ds_config import build_ds_config  # noqa: E402
from mirage_ds.engine.optim import build_optimizer  # noqa: E402
from mirage_ds.losses.base import to_device  # noqa: E402
from mirage_ds.models.loading import DTYPES, build_model, ensure_model_path  # noqa: E402


def preloaded_batches(cfg, bundle, rank: int, world: int, steps: int, device: torch.device) -> list[dict]:
    """This rank's first ``steps`` train batches, in the framework's order, collated and on ``device``."""
    shards = resolve_streams(cfg, ("train",))["train"]
    template = Template(bundle.tokenizer, bundle.n_image_tokens, cfg.data.max_length, cfg.data.template)
    pre = Preprocessor(template, bundle.image_processor, cfg.data.pad_to_square, torch.float32)
    stream = ShardStream(shards, transform=pre.train_example, collate=collate_padded(bundle.tokenizer.pad_token_id),
                         batch_size=cfg.micro_batch_size, seed=cfg.seed, rank=rank, world_size=world, num_workers=0,
                         shuffle_buffer=cfg.data.shuffle_buffer, on_error=cfg.data.on_error)
    batches = Batches(stream)
    return [to_device(next(batches), device, DTYPES[cfg.model.dtype]) for _ in range(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.recipe, args.overrides)

    rank, world = init_distributed()  # the framework's: gloo or nccl, CUDA device, /dev/shm clean-up
    torch.manual_seed(cfg.seed)
    model_path = ensure_model_path(cfg.model)
    hidden = AutoConfig.from_pretrained(model_path, local_files_only=True).text_config.hidden_size
    ds_config = build_ds_config(cfg, world, hidden)
    with zero3_construction(ds_config, model_path):
        bundle = build_model(cfg.model)
    optimizer = build_optimizer(bundle.model, cfg.optim)
    engine, _, _, _ = deepspeed.initialize(model=bundle.model, optimizer=optimizer, config=ds_config)
    engine.train()  # from_pretrained returns eval mode
    batches = preloaded_batches(cfg, bundle, rank, world, args.steps, engine.device)

    for step, batch in enumerate(batches, start=1):
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values=batch["pixel_values"]).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten())
        engine.backward(loss)
        engine.step()
        if rank == 0:
            # No host sync of its own: on a GPU the line may come out before the step's kernels finish, but
            # over many steps the lines advance at the GPU's pace (best case for the baseline).
            print(f"step {step}", flush=True)
    dist.barrier()  # gloo ranks leaving while a peer still tears down can abort
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
