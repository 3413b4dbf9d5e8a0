"""Image members for shards: every image is stored as RGB PNG bytes.

Generated images (placeholders for datasets whose pixels are not given, and the synthetic corpus's
unsafe images) are seeded from text, so the same id always yields the same pixels. Random bytes come from
``random.Random(str)``, which hashes string seeds with SHA-512 and so does not depend on PYTHONHASHSEED.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw, UnidentifiedImageError

from mirage_ds.data.schema import DataError

Glyph = Literal["cross", "ring", "diamond", "bars", "triangle"]
RGB = tuple[int, int, int]


def encode_png(image: Image.Image) -> bytes:
    """RGB PNG without metadata: identical pixels give identical bytes (for one Pillow/zlib build)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _resized(image: Image.Image, size: int | None) -> Image.Image:
    if size is None or image.size == (size, size):
        return image
    return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def png_from_bytes(data: bytes, where: str, size: int | None = None) -> bytes:
    """Re-encode any PIL-readable image bytes as PNG (square ``size`` if given); ``where`` names the source."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return encode_png(_resized(image, size))
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: image does not decode ({err})") from None


def image_under(root: str | Path, relative: str, where: str) -> Path:
    """``root / relative``, the image a dataset file names, which must stay under ``root``: every converter and
    every eval reader joins image paths here. An absolute path is accepted when it lies under ``root``; one
    elsewhere, or a ``..`` that climbs out, is a DataError naming ``where``. The check is on the path as written
    (a symbolic link under ``root`` may point anywhere, as the user set it up).
    """
    joined = os.path.normpath(os.path.join(root, relative))
    top = os.path.abspath(root)
    if not relative or os.path.commonpath([top, os.path.abspath(joined)]) != top:
        raise DataError(f"{where}: image path {relative!r} is not under the images root {root}")
    return Path(joined)


def load_image_bytes(path: str | Path, size: int | None = None) -> bytes:
    """Read an image file in any PIL-readable format and return PNG bytes; errors name the path."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} not found")
    return png_from_bytes(path.read_bytes(), str(path), size)


def _noise(rng: random.Random, size: int) -> Image.Image:
    return Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))


def placeholder_png(seed_text: str, size: int = 32) -> bytes:
    """A flat colour chosen from ``seed_text`` with a quarter of seeded noise blended in.

    Placeholders stand in for images that were not provided; the colour varies by sample so that a
    model cannot treat "placeholder" as one constant input.
    """
    rng = random.Random(f"placeholder:{seed_text}")
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    return encode_png(Image.blend(Image.new("RGB", (size, size), colour), _noise(rng, size), 0.25))


def _glyph_shape(draw: ImageDraw.ImageDraw, glyph: Glyph, box: tuple[int, int, int, int], colour: RGB) -> None:
    left, top, right, bottom = box
    mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
    width = max(1, (right - left) // 5)
    if glyph == "cross":
        draw.line((left, top, right, bottom), fill=colour, width=width)
        draw.line((left, bottom, right, top), fill=colour, width=width)
    elif glyph == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif glyph == "diamond":
        draw.polygon([(mid_x, top), (right, mid_y), (mid_x, bottom), (left, mid_y)], fill=colour)
    elif glyph == "bars":
        step = max(1, (right - left) // 4)
        for x in range(left, right, step * 2):
            draw.rectangle((x, top, x + step - 1, bottom), fill=colour)
    else:
        draw.polygon([(mid_x, top), (right, bottom), (left, bottom)], fill=colour)


def glyph_png(seed_text: str, glyph: Glyph, colour: RGB, size: int = 32) -> bytes:
    """A dark seeded-noise background with diagonal stripes and one coloured glyph at a seeded place.

    The synthetic corpus draws its unsafe images with this: the glyph and colour encode the harm
    category (a visual signal a model can learn), the background and position vary per image.
    """
    rng = random.Random(f"glyph:{seed_text}")
    image = Image.blend(Image.new("RGB", (size, size), (24, 24, 32)), _noise(rng, size), 0.2)
    draw = ImageDraw.Draw(image)
    stripe = (60, 60, 72)
    for offset in range(-size, size, max(2, size // 4)):
        draw.line((offset, 0, offset + size, size), fill=stripe, width=1)
    extent = rng.randrange(size // 2, size * 3 // 4 + 1)
    left, top = rng.randrange(size - extent + 1), rng.randrange(size - extent + 1)
    _glyph_shape(draw, glyph, (left, top, left + extent - 1, top + extent - 1), colour)
    return encode_png(image)
