"""Image grids and encodings (pillow only)."""

from __future__ import annotations

import io
import math

from PIL import Image


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) of the most square grid that holds ``count`` images: 4 → 2x2."""
    if count < 1:
        raise ValueError("a grid needs at least one image")
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def make_grid(images: list[Image.Image]) -> Image.Image:
    """Tile same-sized images row by row; empty cells stay black."""
    columns, rows = grid_shape(len(images))
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError("grid images must share one size")
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image.convert("RGB"), (column * width, row * height))
    return grid


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (deterministic for the same pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
