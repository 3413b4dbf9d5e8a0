"""The TRL side of ``peers.py``: TRL's ``SFTTrainer`` on the recipe's model, samples, ZeRO JSON and steps.

    deepspeed --num_gpus N benchmarks/trl_sft.py --recipe sft_full --steps 60 --out DIR [dotted.key=value ...]

TRL cannot read the framework's webdataset shards, so the same shard samples are converted into TRL's own
vision prompt-completion format, one row per (single-turn) sample, from the framework's own template text:
``prompt`` = the prompt up to ``ASSISTANT:`` with its one ``<image>`` placeholder (``<s>`` written out,
since TRL's collator adds no special tokens), ``completion`` = `` answer</s>``, ``images`` = [the PIL
image] (the synthetic images are already square, so the framework's pad-to-square changes nothing).
TRL's collator then runs the model's saved ``LlavaProcessor`` per batch (image expansion, padding) and
masks the prompt from the loss. Before training, rank 0 prints how many rows its collator turns into
exactly the framework's input ids, labels and pixels (``conversion: N/M samples ...``).

The model is the framework's own ``build_model`` (vision tower frozen, LoRA when the recipe asks),
built after ``SFTConfig`` so that its ``HfDeepSpeedConfig`` partitions it under ZeRO-3. The ZeRO JSON is
the recipe's, resolved by the framework; Trainer's AdamW, cosine schedule and gradient clipping take the
recipe's values. Rank 0 prints one ``step K`` line per optimizer step (flushed), which ``peers.py`` stamps.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoConfig, AutoProcessor, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from mirage_ds.config import load_config  # noqa: E402
from mirage_ds.data.corpus import resolve_streams  # noqa: E402
from mirage_ds.data.preprocess import Preprocessor  # noqa: E402
from mirage_ds.data.schema import Record  # noqa: E402
from mirage_ds.data.shards import read_samples  # noqa: E402
from mirage_ds.data.template import Template  # noqa: E402
from mirage_ds.engine.ds_config import build_ds_config  # noqa: E402
from mirage_ds.models.loading import build_model, ensure_model_path  # noqa: E402


def prompt_completion_rows(samples: list[tuple[Record, bytes]], template: Template) -> list[dict]:
    """(record, PNG bytes) samples as TRL vision prompt-completion rows, in the framework's template."""
    rows = []
    for record, png in samples:
        prompt = template.text(record.turns[:1], add_generation_prompt=True)
        rows.append({"prompt": template.tokenizer.bos_token + prompt,
                     "completion": template.text(record.turns)[len(prompt):],
                     "images": [Image.open(io.BytesIO(png)).convert("RGB")]})
    return rows


def exact_conversions(rows: list[dict], samples: list[tuple[Record, bytes]], pre: Preprocessor, collator) -> int:
    """How many rows TRL's collator turns into the framework's input ids, labels and pixels, exactly."""
    exact = 0
    for row, (record, png) in zip(rows, samples):
        theirs = collator([dict(row)])
        ours = pre.train_example(record, png, record.id)
        exact += (theirs["input_ids"][0].tolist() == ours["input_ids"] and theirs["labels"][0].tolist() == ours["labels"]
                  and torch.equal(theirs["pixel_values"][0], ours["pixel_values"]))
    return exact


class StepLines(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(f"step {state.global_step}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.recipe, args.overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model_path = ensure_model_path(cfg.model)
    hidden = AutoConfig.from_pretrained(model_path, local_files_only=True).text_config.hidden_size

    sft_args = SFTConfig(
        output_dir=args.out, max_steps=args.steps, seed=cfg.seed, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1], adam_epsilon=cfg.optim.eps,
        lr_scheduler_type=cfg.optim.scheduler, warmup_steps=cfg.optim.warmup_ratio, max_grad_norm=cfg.optim.grad_clip,
        deepspeed=build_ds_config(cfg, world, hidden), max_length=cfg.data.max_length,
        dataloader_num_workers=cfg.data.num_workers, logging_steps=cfg.log_every, report_to="none",
        save_strategy="no", bf16=cfg.model.dtype == "bf16", fp16=cfg.model.dtype == "fp16",
        gradient_checkpointing=cfg.model.gradient_checkpointing,  # TRL's default is on; the recipe's is off
    )
    sft_args.device  # sets up the process group now: zero.Init inside build_model partitions over the world
    bundle = build_model(cfg.model)
    template = Template(bundle.tokenizer, bundle.n_image_tokens, cfg.data.max_length, cfg.data.template)
    samples = read_samples(resolve_streams(cfg, ("train",))["train"])
    rows = prompt_completion_rows(samples, template)
    processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
    trainer = SFTTrainer(model=bundle.model, args=sft_args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=processor, callbacks=[StepLines()])
    if sft_args.process_index == 0:
        pre = Preprocessor(template, bundle.image_processor, cfg.data.pad_to_square)
        exact = exact_conversions(rows, samples, pre, trainer.data_collator)
        print(f"conversion: {exact}/{len(rows)} samples give the framework's input ids, labels and pixels exactly", flush=True)
    trainer.train()


if __name__ == "__main__":
    main()
