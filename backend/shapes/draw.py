"""Procedural training data for the shapes model: one filled shape on a flat background."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from backend.shapes.vocab import (
    BACKGROUNDS,
    EVALUATION_TEMPLATE,
    HELD_OUT,
    POSITION_PHRASE,
    RGB,
    SHAPE_COLORS,
    SHAPES,
    SIZE_FRACTION,
    TEMPLATES,
    Color,
    Combination,
    Position,
    Shape,
    Size,
)

# Drawn this many times larger, then box-filtered down: exact area anti-aliasing.
SUPERSAMPLE = 8
JITTER_POSITION = 0.04
JITTER_SIZE = 0.08
JITTER_ROTATION_DEG = 15.0
STAR_INNER_RATIO = 0.42
# How far a position word moves the centre, as a share of the room the shape leaves.
POSITION_REACH = 0.8

_OFFSETS = {
    None: (0.0, 0.0),
    Position.CENTRE: (0.0, 0.0),
    Position.LEFT: (-1.0, 0.0),
    Position.RIGHT: (1.0, 0.0),
    Position.TOP: (0.0, -1.0),
    Position.BOTTOM: (0.0, 1.0),
}


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """What one image shows: a shape, its colour, its background, and optional size/position."""

    color: Color
    shape: Shape
    background: Color
    size: Size | None = None
    position: Position | None = None

    @property
    def combination(self) -> Combination:
        """The (colour, shape, background) triple that training holds out or keeps."""
        return (self.color, self.shape, self.background)

    def caption(self, template: str = EVALUATION_TEMPLATE) -> str:
        """The caption from ``template``, absent size or position words left out."""
        text = template.format(
            color=self.color,
            shape=self.shape,
            background=self.background,
            size=self.size or "",
            position=POSITION_PHRASE[self.position] if self.position else "",
        )
        text = re.sub(r"\s+", " ", text).replace(" ,", ",").strip()
        return re.sub(r"\ba ([aeiou])", r"an \1", text)


def _polygon(
    shape: Shape, centre: tuple[float, float], extent: float, angle: float
) -> list[tuple[float, float]]:
    """The vertices of a triangle or star whose width is about ``extent``."""
    if shape is Shape.TRIANGLE:
        radius = extent / math.sqrt(3)
        radii = [radius] * 3
        # The centroid sits below the box's middle; shift so the triangle is centred.
        cx, cy = centre[0], centre[1] + radius / 4
    else:
        radius = extent / 2
        radii = [radius, radius * STAR_INNER_RATIO] * 5
        cx, cy = centre
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.sin(angle + i * step), cy - r * math.cos(angle + i * step))
        for i, r in enumerate(radii)
    ]


def _layout(
    spec: ShapeSpec, rng: np.random.Generator | None
) -> tuple[tuple[float, float], float, float]:
    """Centre (in image fractions), extent (a fraction) and rotation (radians) of the shape."""
    jitter = rng.uniform(-1.0, 1.0, size=4) if rng is not None else np.zeros(4)
    extent = SIZE_FRACTION[spec.size] * (1 + JITTER_SIZE * float(jitter[0]))
    reach = (1 - extent) / 2 * POSITION_REACH
    dx, dy = _OFFSETS[spec.position]
    centre = (
        0.5 + dx * reach + JITTER_POSITION * float(jitter[1]),
        0.5 + dy * reach + JITTER_POSITION * float(jitter[2]),
    )
    rotates = spec.shape in (Shape.TRIANGLE, Shape.STAR)
    angle = math.radians(JITTER_ROTATION_DEG * float(jitter[3])) if rotates else 0.0
    return centre, extent, angle


def draw(
    sample: ShapeSpec, size_px: int = 32, *, rng: np.random.Generator | None = None
) -> Image.Image:
    """Draw ``sample`` as a ``size_px`` square RGB image; ``rng`` jitters it (None: none)."""
    (fx, fy), fraction, angle = _layout(sample, rng)
    big = size_px * SUPERSAMPLE
    centre, extent = (fx * big, fy * big), fraction * big
    image = Image.new("RGB", (big, big), RGB[sample.background])
    pen = ImageDraw.Draw(image)
    fill = RGB[sample.color]
    half = extent / 2
    box = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    if sample.shape is Shape.CIRCLE:
        pen.ellipse(box, fill=fill)
    elif sample.shape is Shape.SQUARE:
        # A square of the circle's area would look small beside it; 0.9 keeps them alike.
        inset = extent * 0.05
        pen.rectangle((box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset), fill=fill)
    else:
        pen.polygon(_polygon(sample.shape, centre, extent, angle), fill=fill)
    return image.resize((size_px, size_px), Image.Resampling.BOX)


def random_spec(
    rng: np.random.Generator, held_out: frozenset[Combination] = frozenset()
) -> ShapeSpec:
    """A random spec from the vocabulary, never in its background's colour nor in ``held_out``."""
    while True:
        color = SHAPE_COLORS[int(rng.integers(len(SHAPE_COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        if color != background and (color, shape, background) not in held_out:
            break
    # Half the captions name no size and most name no position, as people write them.
    size = (None, None, Size.SMALL, Size.LARGE)[int(rng.integers(4))]
    positions = (None, None, None, *Position)
    position = positions[int(rng.integers(len(positions)))]
    return ShapeSpec(color, shape, background, size, position)


def training_specs(
    seed: int, count: int, held_out: frozenset[Combination] = HELD_OUT
) -> Iterator[tuple[ShapeSpec, str]]:
    """``count`` (spec, caption) pairs, determined by ``seed``, none in ``held_out``."""
    rng = np.random.default_rng([seed, 0])
    for _ in range(count):
        spec = random_spec(rng, held_out)
        yield spec, spec.caption(TEMPLATES[int(rng.integers(len(TEMPLATES)))])


def training_samples(
    seed: int, count: int, held_out: frozenset[Combination] = HELD_OUT, size_px: int = 32
) -> Iterator[tuple[Image.Image, str]]:
    """``count`` (image, caption) pairs, determined by ``seed``, none in ``held_out``."""
    # A stream of its own for the jitter, so the specs do not depend on the drawing.
    jitter = np.random.default_rng([seed, 1])
    for spec, caption in training_specs(seed, count, held_out):
        yield draw(spec, size_px, rng=jitter), caption


def evaluation_specs() -> list[ShapeSpec]:
    """The held-out combinations as specs, in a fixed order, with no size or position word."""
    return [ShapeSpec(*combination) for combination in sorted(HELD_OUT)]


def evaluation_prompts() -> list[str]:
    """The held-out prompts, in a fixed order, all written in the evaluation template."""
    return [spec.caption(EVALUATION_TEMPLATE) for spec in evaluation_specs()]
