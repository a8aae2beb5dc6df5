"""Grids of samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from backend.grid import encode_png, grid_shape, make_grid, tile_scale


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


@pytest.mark.parametrize(
    ("size", "min_tile_px", "factor"),
    [
        ((32, 32), 256, 8),
        ((40, 24), 256, 11),
        ((24, 40), 256, 11),
        ((33, 33), 256, 8),
        ((200, 300), 256, 2),
        ((256, 256), 256, 1),
        ((512, 300), 256, 1),
        ((32, 32), 0, 1),
        ((1, 1), 0, 1),
    ],
)
def test_tile_scale_is_the_smallest_whole_factor_reaching_the_minimum(
    size: tuple[int, int], min_tile_px: int, factor: int
) -> None:
    """The factor lifts the shorter side to at least min_tile_px; 0 or a large side: 1."""
    assert tile_scale(size, min_tile_px) == factor


@given(
    width=st.integers(min_value=1, max_value=600),
    height=st.integers(min_value=1, max_value=600),
    min_tile_px=st.integers(min_value=0, max_value=2048),
)
def test_tile_scale_properties(width: int, height: int, min_tile_px: int) -> None:
    """Scaled tiles reach the minimum, and one factor less would not (when scaled at all)."""
    factor = tile_scale((width, height), min_tile_px)
    shorter = min(width, height)
    assert factor >= 1
    assert shorter * factor >= min_tile_px
    if factor > 1:
        assert shorter * (factor - 1) < min_tile_px


def _noise(count: int, size: tuple[int, int]) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(count)
    ]


def _tile(grid: Image.Image, index: int, columns: int, size: tuple[int, int]) -> Image.Image:
    row, column = divmod(index, columns)
    left, top = column * size[0], row * size[1]
    return grid.crop((left, top, left + size[0], top + size[1]))


def test_small_tiles_scale_up_with_nearest_in_order() -> None:
    """With nearest, tile i is image i with each pixel repeated factor x factor times."""
    images = _noise(5, (40, 24))
    grid = make_grid(images, min_tile_px=256, resample="nearest")
    factor = 11
    assert grid.size == (3 * 40 * factor, 2 * 24 * factor)
    for index, image in enumerate(images):
        tile = np.asarray(_tile(grid, index, 3, (40 * factor, 24 * factor)))
        expected = np.asarray(image).repeat(factor, axis=0).repeat(factor, axis=1)
        assert np.array_equal(tile, expected), index
        downscaled = _tile(grid, index, 3, (40 * factor, 24 * factor)).resize(
            image.size, Image.Resampling.NEAREST
        )
        assert downscaled.tobytes() == image.tobytes(), index
    empty = _tile(grid, 5, 3, (40 * factor, 24 * factor))
    assert empty.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert all(image.size == (40, 24) for image in images)


def test_small_tiles_scale_up_with_lanczos_in_order() -> None:
    """Lanczos tiles have the same size and order, smooth noise, and keep flat colours."""
    colours = [(220, 40, 40), (40, 160, 60), (40, 70, 210), (240, 220, 40)]
    flat = [Image.new("RGB", (32, 32), colour) for colour in colours]
    grid = make_grid(flat, min_tile_px=256, resample="lanczos")
    assert grid.size == (512, 512)
    for index, colour in enumerate(colours):
        extrema = _tile(grid, index, 2, (256, 256)).getextrema()
        assert extrema == tuple((channel, channel) for channel in colour), index
    noise = _noise(4, (32, 32))
    smooth = make_grid(noise, min_tile_px=256, resample="lanczos")
    blocky = make_grid(noise, min_tile_px=256, resample="nearest")
    assert smooth.size == blocky.size == (512, 512)
    assert smooth.tobytes() != blocky.tobytes()


def test_min_tile_zero_never_scales() -> None:
    """min_tile_px 0 leaves tiles at their own size, whatever the filter."""
    images = _noise(4, (32, 32))
    for resample in ("nearest", "lanczos"):
        grid = make_grid(images, min_tile_px=0, resample=resample)
        assert grid.tobytes() == make_grid(images).tobytes()
        assert grid.size == (64, 64)


def test_large_tiles_are_untouched() -> None:
    """Tiles already at the minimum are pasted as they are."""
    images = _noise(2, (256, 300))
    grid = make_grid(images, min_tile_px=256, resample="lanczos")
    assert grid.size == (512, 300)
    for index, image in enumerate(images):
        assert _tile(grid, index, 2, (256, 300)).tobytes() == image.tobytes()
