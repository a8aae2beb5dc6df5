"""An automatic reader of shapes-model images: background colour, shape colour and shape.

Pure numpy/PIL, no weights. The background is the median colour of the border pixels;
the shape's colour is the median of the pixels farthest from it (the interior, clear of
anti-aliased edges). Each pixel's coverage ``alpha`` is its position on the line from the
background colour to the shape colour, so outlines are sub-pixel exact at 32 px and the
same at any upscale.

The shape comes from its outline's symmetry. Along rays from the coverage-weighted
centre, the covered length ``r(theta)`` traces the outline; the amplitudes of its Fourier
harmonics at 3, 4 and 5 cycles per turn, relative to the mean radius, are how strongly it
has three corners (a triangle), four (a square) or five points (a star). A circle has
none, and none of this depends on position, size or rotation. A generated star's points
are rounder than a drawn one's, so its fifth harmonic counts for more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from backend.shapes.vocab import RGB, Color, Shape

Array = npt.NDArray[np.float64]

MIN_CONTRAST: Final = 40.0
"""RGB distance from the background below which nothing counts as a shape."""

MIN_AREA: Final = 0.003
"""Least share of the image the shape covers before it counts as one."""

CORE: Final = 0.75
"""Pixels at least this share of the farthest distance from the background are interior."""

RAYS: Final = 64
"""Directions the outline is measured in (a power of two above ten: harmonics up to 5)."""

ROUND_BELOW: Final = 0.04
"""Weighted harmonic strength under which a shape has no corners: a circle."""

HARMONIC_WEIGHT: Final = MappingProxyType({Shape.TRIANGLE: 0.4, Shape.SQUARE: 0.6, Shape.STAR: 1.3})
"""How much each shape's harmonic (3, 4, 5 cycles per turn) counts when they compete."""

_CYCLES: Final = MappingProxyType({Shape.TRIANGLE: 3, Shape.SQUARE: 4, Shape.STAR: 5})


@dataclass(frozen=True, slots=True)
class Scored:
    """What the scorer read: background colour, shape colour and shape (None: no shape)."""

    background: Color
    color: Color | None
    shape: Shape | None


def nearest_color(rgb: Array, exclude: Color | None = None) -> Color:
    """The named colour closest to ``rgb`` in RGB distance, ``exclude`` left out."""
    names = [name for name in RGB if name != exclude]
    return min(names, key=lambda name: float(np.linalg.norm(rgb - np.asarray(RGB[name]))))


def _border(pixels: Array) -> Array:
    """The median colour of the one-pixel border, which a centred shape rarely reaches."""
    ring = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return np.asarray(np.median(ring, axis=0), dtype=np.float64)


def coverage(pixels: Array, background: Array, foreground: Array) -> Array:
    """Each pixel's share of the foreground colour, from 0 (background) to 1."""
    axis = foreground - background
    alpha = (pixels - background) @ axis / float(axis @ axis)
    return np.asarray(np.clip(alpha, 0.0, 1.0), dtype=np.float64)


def _sample(alpha: Array, ys: Array, xs: Array) -> Array:
    """Bilinear coverage at pixel-centre coordinates (y, x); 0 outside the image."""
    height, width = alpha.shape
    inside = (ys >= 0) & (ys <= height - 1) & (xs >= 0) & (xs <= width - 1)
    ys = np.clip(ys, 0, height - 1.000001)
    xs = np.clip(xs, 0, width - 1.000001)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    top = alpha[y0, x0] * (1 - fx) + alpha[y0, x0 + 1] * fx
    bottom = alpha[y0 + 1, x0] * (1 - fx) + alpha[y0 + 1, x0 + 1] * fx
    return np.asarray((top * (1 - fy) + bottom * fy) * inside, dtype=np.float64)


def harmonics(alpha: Array) -> dict[Shape, float]:
    """Each cornered shape's harmonic amplitude in the outline of ``alpha``, relative to
    the mean radius (0 for a perfect circle; about 0.27, 0.14 and 0.31 for a drawn
    triangle, square and star)."""
    height, width = alpha.shape
    rows, columns = np.mgrid[0:height, 0:width]
    total = float(alpha.sum())
    centre_y = float((alpha * rows).sum()) / total
    centre_x = float((alpha * columns).sum()) / total
    reach = 0.75 * max(height, width)
    steps = 3 * max(height, width)
    radii = (np.arange(steps) + 0.5) * (reach / steps)
    angles = np.arange(RAYS) * (2 * math.pi / RAYS)
    ys = centre_y + np.outer(np.sin(angles), radii)
    xs = centre_x + np.outer(np.cos(angles), radii)
    outline = _sample(alpha, ys, xs).sum(axis=1) * (reach / steps)
    spectrum = np.abs(np.fft.rfft(outline)) * 2 / (RAYS * max(float(outline.mean()), 1e-9))
    return {shape: float(spectrum[cycles]) for shape, cycles in _CYCLES.items()}


def classify(strength: dict[Shape, float]) -> Shape:
    """The shape whose weighted harmonic is strongest, or a circle when none is strong."""
    weighted = {shape: value * HARMONIC_WEIGHT[shape] for shape, value in strength.items()}
    best = max(weighted, key=weighted.__getitem__)
    return best if weighted[best] >= ROUND_BELOW else Shape.CIRCLE


def score(image: Image.Image) -> Scored:
    """Read ``image``'s background colour, shape colour and shape; None where no shape shows."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    background = _border(pixels)
    named_background = nearest_color(background)
    distance = np.linalg.norm(pixels - background, axis=-1)
    # A high percentile, not the maximum, so one stray pixel does not set the scale.
    peak = float(np.percentile(distance, 99.5))
    if peak < MIN_CONTRAST:
        return Scored(named_background, None, None)
    foreground = np.asarray(np.median(pixels[distance >= CORE * peak], axis=0))
    alpha = coverage(pixels, background, foreground)
    if alpha.sum() < MIN_AREA * math.prod(alpha.shape):
        return Scored(named_background, None, None)
    shape = classify(harmonics(alpha))
    return Scored(named_background, nearest_color(foreground, exclude=named_background), shape)
