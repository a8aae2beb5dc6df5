"""Grids of samples."""

from __future__ import annotations

import pytest
from PIL import Image

from backend.grid import encode_png, grid_shape, make_grid


@pytest.mark.parametrize(
    ("count", "shape"), [(1, (1, 1)), (2, (2, 1)), (4, (2, 2)), (5, (3, 2)), (9, (3, 3))]
)
def test_grid_shape_is_most_square(count: int, shape: tuple[int, int]) -> None:
    """Four samples make a 2x2 grid; other counts the most square layout."""
    assert grid_shape(count) == shape


def test_make_grid_places_samples_row_by_row() -> None:
    """Sample i lands in column i % cols, row i // cols."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [Image.new("RGB", (8, 4), colour) for colour in colours]
    grid = make_grid(images)
    assert grid.size == (16, 8)
    assert grid.getpixel((1, 1)) == colours[0]
    assert grid.getpixel((9, 1)) == colours[1]
    assert grid.getpixel((1, 5)) == colours[2]
    assert grid.getpixel((9, 5)) == colours[3]


def test_make_grid_refuses_mixed_sizes() -> None:
    """Samples of different sizes cannot share a grid."""
    with pytest.raises(ValueError, match="share one size"):
        make_grid([Image.new("RGB", (8, 8)), Image.new("RGB", (4, 8))])


def test_png_encoding_is_deterministic() -> None:
    """The same pixels give the same PNG bytes (content-addressed storage relies on it)."""
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    assert encode_png(image) == encode_png(image.copy())
    assert encode_png(image)[:8] == b"\x89PNG\r\n\x1a\n"
