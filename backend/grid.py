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


RESAMPLING = {"nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
"""The filters a grid's tiles may be scaled up with, by setting name."""


def tile_scale(size: tuple[int, int], min_tile_px: int) -> int:
    """The whole factor that brings ``size``'s shorter side to ``min_tile_px`` (1: none)."""
    shorter = min(size)
    if min_tile_px <= 0 or shorter >= min_tile_px:
        return 1
    return -(-min_tile_px // shorter)


def make_grid(
    images: list[Image.Image], min_tile_px: int = 0, resample: str = "lanczos"
) -> Image.Image:
    """Tile same-sized images row by row; empty cells stay black.

    Tiles whose shorter side is under ``min_tile_px`` are scaled up by a whole factor
    to reach it, with the ``resample`` filter (``nearest`` or ``lanczos``), so that a
    small model's grid is readable; the images themselves are not changed.
    """
    columns, rows = grid_shape(len(images))
    size = images[0].size
    if any(image.size != size for image in images):
        raise ValueError("grid images must share one size")
    factor = tile_scale(size, min_tile_px)
    width, height = size[0] * factor, size[1] * factor
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        tile = image.convert("RGB")
        if factor > 1:
            tile = tile.resize((width, height), RESAMPLING[resample])
        grid.paste(tile, (column * width, row * height))
    return grid


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image`` (deterministic for the same pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
