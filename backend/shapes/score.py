"""An automatic reader of shapes-model images: background colour, shape colour and shape.

Pure numpy/PIL, no weights. The background is the median colour of the border pixels;
the shape's colour is the median of the pixels farthest from it (the interior, clear of
anti-aliased edges). Each pixel's coverage ``alpha`` is its position on the line from the
background colour to the shape colour, so areas are sub-pixel exact at 32 px and the same
at any upscale. The shape comes from two scale-free features of that coverage:

- solidity, area over convex-hull area: about 0.5 for a five-pointed star, near 1 for
  the convex shapes, so it separates stars whatever their rotation;
- extent, area over bounding-box area: 1 for a square (drawn axis-aligned), pi/4 for a
  circle, at most about 0.5 for a triangle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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

STAR_SOLIDITY: Final = 0.745
SQUARE_EXTENT: Final = 0.9
CIRCLE_EXTENT: Final = 0.68


@dataclass(frozen=True, slots=True)
class Scored:
    """What the scorer read: background colour, shape colour and shape (None: no shape)."""

    background: Color
    color: Color | None
    shape: Shape | None


@dataclass(frozen=True, slots=True)
class Features:
    """The scale-free geometry a shape is classified by."""

    solidity: float
    extent: float


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


def _hull(points: Array) -> Array:
    """The convex hull of ``points`` (n x 2), counter-clockwise (monotone chain)."""
    ordered = sorted({(float(x), float(y)) for x, y in points})
    if len(ordered) < 3:
        return np.asarray(ordered, dtype=np.float64)

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.asarray(half(ordered) + half(ordered[::-1]), dtype=np.float64)


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _hull_area(alpha: Array) -> float:
    """Area of the convex hull of the covered pixels' squares (their outer corners)."""
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    points: list[tuple[int, int]] = []
    for y in rows.tolist():
        xs = np.flatnonzero(alpha[y] > 0.5)
        # Only a row's outermost pixels can be hull points; their corners bound the shape.
        for x in (int(xs[0]), int(xs[-1]) + 1):
            points += [(x, y), (x, y + 1)]
    hull = _hull(np.asarray(points, dtype=np.float64))
    if len(hull) < 3:
        return 0.0
    hx, hy = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(hx, np.roll(hy, 1)) - np.dot(hy, np.roll(hx, 1))) / 2)


def features(alpha: Array) -> Features:
    """Solidity and extent of the coverage map ``alpha``."""
    area = float(alpha.sum())
    # Each column's (row's) strongest coverage is the share of it the shape spans.
    width = float(alpha.max(axis=0).sum())
    height = float(alpha.max(axis=1).sum())
    hull = _hull_area(alpha)
    return Features(
        solidity=area / hull if hull else 0.0,
        extent=area / (width * height) if width and height else 0.0,
    )


def classify(found: Features) -> Shape:
    """The shape whose geometry ``found`` matches."""
    if found.solidity < STAR_SOLIDITY:
        return Shape.STAR
    if found.extent >= SQUARE_EXTENT:
        return Shape.SQUARE
    if found.extent >= CIRCLE_EXTENT:
        return Shape.CIRCLE
    return Shape.TRIANGLE


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
    shape = classify(features(alpha))
    return Scored(named_background, nearest_color(foreground, exclude=named_background), shape)
