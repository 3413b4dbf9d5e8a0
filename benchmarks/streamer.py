"""Shard streamer vs a naive JSON + PIL loader over the same samples, measured side by side in one run.

The naive loader is the shape of LLaVA's official ``LazySupervisedDataset``: a JSON list of records and a
folder of image files; each sample opens its image with PIL, runs the image processor, tokenises the
whole prompt and then re-tokenises every round to find the mask boundaries. Both sides produce the same
padded batches (ids, labels, attention mask, pixels) from the same easy-vqa samples.

    .venv/bin/python benchmarks/streamer.py [--samples 1200] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import easy_vqa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mirage_ds.config import ModelConfig
from mirage_ds.data.images import load_image_bytes
from mirage_ds.data.preprocess import Preprocessor, expand_to_square
from mirage_ds.data.schema import Record, Turn
from mirage_ds.data.streamer import Batches, ShardStream, collate_padded
from mirage_ds.data.template import IGNORE_INDEX, Template
from mirage_ds.data.writer import write_shards
from mirage_ds.models.loading import build_model
from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS


def build_inputs(root: Path, n: int) -> tuple[Path, Path]:
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    records = [
        Record(id=f"evqa-{i}", turns=[Turn(role="user", text=questions[i]), Turn(role="assistant", text=answers[i])],
               role="sft", source="easyvqa", meta={"image": str(paths[image_ids[i]])})
        for i in range(n)
    ]
    shards = root / "shards"
    write_shards(((r, load_image_bytes(r.meta["image"])) for r in records), shards, shard_size=n // 8, min_shards=8)
    listing = root / "naive.json"
    listing.write_text(json.dumps([{"id": r.id, "image": r.meta["image"],
                                    "conversations": [{"from": "human", "value": r.turns[0].text},
                                                      {"from": "gpt", "value": r.turns[1].text}]} for r in records]))
    return shards, listing


class NaiveDataset(Dataset):
    def __init__(self, listing: Path, tokenizer, image_processor, n_image_tokens: int) -> None:
        self.items = json.loads(listing.read_text())
        self.tokenizer, self.image_processor, self.n_image = tokenizer, image_processor, n_image_tokens
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.fill = tuple(int(round(m * 255)) for m in image_processor.image_mean)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        image = expand_to_square(Image.open(item["image"]).convert("RGB"), self.fill)
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        q, a = item["conversations"][0]["value"], item["conversations"][1]["value"]
        prompt = f"{SYSTEM_PROMPTS['vicuna_v1']} USER: <image>\n{q} ASSISTANT:"
        text = f"{prompt} {a}</s>"
        ids = self._expand(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        prefix = len(self._expand(self.tokenizer(prompt, add_special_tokens=True)["input_ids"]))
        labels = [IGNORE_INDEX] * prefix + ids[prefix:]
        return {"id": item["id"], "input_ids": ids, "labels": labels, "image_mask": [t == self.image_id for t in ids], "pixel_values": pixels}

    def _expand(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for t in ids:
            out += [t] * self.n_image if t == self.image_id else [t]
        return out


def time_batches(make_iter, n_batches: int) -> float:
    iterator = make_iter()
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(n_batches):
        next(iterator)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = build_model(ModelConfig())
    template = Template(bundle.tokenizer, bundle.n_image_tokens, 512)
    pre = Preprocessor(template, bundle.image_processor, True)
    collate = collate_padded(bundle.tokenizer.pad_token_id)
    n_batches = args.samples // args.batch - 2

    with tempfile.TemporaryDirectory() as tmp:
        shards, listing = build_inputs(Path(tmp), args.samples)
        naive = NaiveDataset(listing, bundle.tokenizer, bundle.image_processor, bundle.n_image_tokens)

        def streamer(workers: int):
            return lambda: Batches(ShardStream(shards, transform=pre.train_example, collate=collate, batch_size=args.batch,
                                               seed=0, rank=0, world_size=1, num_workers=workers, shuffle_buffer=64, on_error="raise"))

        def naive_loader(workers: int):
            return lambda: iter(DataLoader(naive, batch_size=args.batch, shuffle=True, num_workers=workers, collate_fn=collate))

        contenders = {
            "streamer, 0 workers": streamer(0),
            "naive JSON+PIL, 0 workers": naive_loader(0),
            "streamer, 2 workers": streamer(2),
            "naive JSON+PIL, 2 workers": naive_loader(2),
        }
        best: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every contender alike
            for name, make in contenders.items():
                seconds = time_batches(make, n_batches)
                best[name] = max(best.get(name, 0.0), n_batches * args.batch / seconds)

    print(f"{'loader':<28}{'samples/s':>12}")
    for name, rate in best.items():
        print(f"{name:<28}{rate:>12.1f}")
    for workers in (0, 2):
        ratio = best[f"streamer, {workers} workers"] / best[f"naive JSON+PIL, {workers} workers"]
        print(f"ratio streamer / naive ({workers} workers): {ratio:.2f}x")


if __name__ == "__main__":
    main()
