"""Sample -> model inputs, identical at training and evaluation time.

The official LLaVA code pads to square (with the image mean colour) at training time but not always at
evaluation time; here both call ``Preprocessor``, so the only difference is ``add_generation_prompt``.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from mirage_ds.data.schema import Record, SampleError, Turn
from mirage_ds.data.template import Template


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class Preprocessor:
    def __init__(self, template: Template, image_processor: Any, pad_to_square: bool, dtype: torch.dtype = torch.float32) -> None:
        self.template = template
        self.image_processor = image_processor
        self.pad_to_square = pad_to_square
        self.dtype = dtype
        mean = getattr(image_processor, "image_mean", [0.5, 0.5, 0.5])
        # LLaVA's expand2square colour truncates: (122, 116, 104) for CLIP's mean, not the rounded (123, 117, 104).
        self.fill = tuple(int(m * 255) for m in mean)

    def pixels(self, image_bytes: bytes, where: str) -> torch.Tensor:
        """[3, H, W] pixel values in the model's dtype."""
        try:
            image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise SampleError(f"{where}: image does not decode ({err})") from None
        if self.pad_to_square:
            image = expand_to_square(image, self.fill)
        values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return values.to(self.dtype)

    def train_example(self, record: Record, image_bytes: bytes, where: str) -> dict[str, Any]:
        encoded = self.template.encode(record.turns, where)
        if encoded.n_answer_tokens == 0:
            raise SampleError(f"{where}: no answer tokens left after truncation to data.max_length")
        return {
            "id": record.id,
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "image_mask": encoded.image_mask,
            "pixel_values": self.pixels(image_bytes, where),
        }

    def prompt_example(self, question: str, image_bytes: bytes, where: str) -> dict[str, Any]:
        """Generation input: the same template up to ``ASSISTANT:``."""
        encoded = self.template.encode([Turn(role="user", text=question)], where, add_generation_prompt=True)
        return {
            "id": where,
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "image_mask": encoded.image_mask,
            "pixel_values": self.pixels(image_bytes, where),
        }
