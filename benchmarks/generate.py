"""Batched vs one-at-a-time greedy generation on the tiny model, measured side by side in one run.

    .venv/bin/python benchmarks/generate.py [--prompts 64] [--batch 16] [--new-tokens 32] [--repeats 2]

One-at-a-time is how the official Safety Mirage evaluation generates. Both sides use the same Generator,
preprocessing and greedy decoding; ``min_new_tokens`` pins the generated length so both do equal work.
"""

from __future__ import annotations

import argparse
import time

import torch

from mirage_ds.config import ModelConfig
from mirage_ds.data.images import placeholder_png
from mirage_ds.eval.generation import Generator, Prompt
from mirage_ds.models.loading import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bundle = build_model(ModelConfig())
    model = bundle.model.eval()
    model.generation_config.min_new_tokens = args.new_tokens
    prompts = [Prompt(f"p{i}", f"What color is shape number {i}?", placeholder_png(f"p{i}")) for i in range(args.prompts)]
    rates: dict[int, float] = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        for batch in (1, args.batch):
            gen = Generator(model, bundle.tokenizer, bundle.image_processor, batch_size=batch,
                            max_new_tokens=args.new_tokens, progress=False)
            start = time.perf_counter()
            gen.generate(prompts)
            rates[batch] = max(rates.get(batch, 0.0), args.prompts / (time.perf_counter() - start))
    print(f"threads {torch.get_num_threads()}, {args.prompts} prompts, {args.new_tokens} new tokens each")
    print(f"one at a time : {rates[1]:8.2f} samples/s")
    print(f"batch {args.batch:<7} : {rates[args.batch]:8.2f} samples/s")
    print(f"ratio batched / one-at-a-time: {rates[args.batch] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
