from __future__ import annotations

import time
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from backend.shapes.draw import ShapeSpec, draw, evaluation_specs, random_spec
from backend.shapes.score import score
from backend.shapes.vocab import RGB, Color

ATTRIBUTES = ("background", "color", "shape")


def _accuracy(specs: list[ShapeSpec], images: list[Image.Image]) -> dict[str, float]:
    wrong: Counter[str] = Counter()
    for spec, image in zip(specs, images, strict=True):
        read = score(image)
        wrong.update(name for name in ATTRIBUTES if getattr(read, name) != getattr(spec, name))
    return {name: 1 - wrong[name] / len(specs) for name in ATTRIBUTES}


def test_scorer_reads_back_drawn_samples() -> None:
    """On 500 seeded drawings the scorer finds each attribute right at least 99% of the time."""
    rng = np.random.default_rng(2024)
    specs = [random_spec(rng) for _ in range(500)]
    images = [draw(spec, 32, rng=rng) for spec in specs]
    started = time.perf_counter()
    accuracy = _accuracy(specs, images)
    print(f"scorer accuracy on 500 drawings: {accuracy} in {time.perf_counter() - started:.2f}s")
    assert all(value >= 0.99 for value in accuracy.values()), accuracy


def test_scorer_reads_back_the_held_out_prompts() -> None:
    """Every held-out combination, drawn plainly, is read back exactly."""
    specs = evaluation_specs()
    assert _accuracy(specs, [draw(spec) for spec in specs]) == dict.fromkeys(ATTRIBUTES, 1.0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    factor=st.sampled_from((2, 4, 8)),
    resample=st.sampled_from(
        (Image.Resampling.NEAREST, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
    ),
)
def test_scorer_reads_upscaled_images_alike(
    seed: int, factor: int, resample: Image.Resampling
) -> None:
    """An upscaled drawing (nearest, bicubic or Lanczos) reads the same as its spec."""
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    image = draw(spec, 32, rng=rng)
    big = image.resize((32 * factor, 32 * factor), resample)
    read = score(big)
    assert (read.color, read.shape, read.background) == spec.combination


@settings(max_examples=30, deadline=None)
@given(color=st.sampled_from(list(RGB)), side=st.sampled_from((8, 32, 256)))
def test_scorer_finds_no_shape_in_a_flat_image(color: Color, side: int) -> None:
    """A flat image reads as its background with no shape colour and no shape."""
    read = score(Image.new("RGB", (side, side), RGB[color]))
    assert read.background is color
    assert read.color is None and read.shape is None


def test_scorer_ignores_faint_noise() -> None:
    """Low-amplitude noise on a flat background is not mistaken for a shape."""
    rng = np.random.default_rng(0)
    base = np.full((32, 32, 3), RGB[Color.GRAY], dtype=np.float64)
    noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    read = score(Image.fromarray(noisy))
    assert read.background is Color.GRAY
    assert read.color is None and read.shape is None
