"""The vocabulary of the built-in shapes model, as frozen data.

Everything the model can be asked for is named here; the drawing, the captions, the
held-out evaluation set and the scorer all read these values and nothing else.
"""

from __future__ import annotations

import re
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Color(StrEnum):
    """A named colour, used for shapes and backgrounds."""

    RED = "red"
    ORANGE = "orange"
    YELLOW = "yellow"
    GREEN = "green"
    CYAN = "cyan"
    BLUE = "blue"
    PURPLE = "purple"
    PINK = "pink"
    WHITE = "white"
    BLACK = "black"
    GRAY = "gray"


class Shape(StrEnum):
    """A shape the model draws."""

    CIRCLE = "circle"
    SQUARE = "square"
    TRIANGLE = "triangle"
    STAR = "star"


class Size(StrEnum):
    """An optional size word; no word means the medium size."""

    SMALL = "small"
    LARGE = "large"


class Position(StrEnum):
    """An optional position word; no word means the centre."""

    LEFT = "left"
    RIGHT = "right"
    TOP = "top"
    BOTTOM = "bottom"
    CENTRE = "centre"


# At least 80 apart (RGB Euclidean) pairwise, so the scorer's nearest-colour reading
# survives anti-aliasing and a model's colour drift.
RGB: Final = MappingProxyType(
    {
        Color.RED: (220, 40, 40),
        Color.ORANGE: (245, 140, 20),
        Color.YELLOW: (240, 220, 40),
        Color.GREEN: (40, 160, 60),
        Color.CYAN: (40, 200, 220),
        Color.BLUE: (40, 70, 210),
        Color.PURPLE: (140, 50, 170),
        Color.PINK: (245, 130, 190),
        Color.WHITE: (245, 245, 245),
        Color.BLACK: (25, 25, 25),
        Color.GRAY: (128, 128, 128),
    }
)
"""Each named colour's RGB value."""

SHAPE_COLORS: Final = (
    Color.RED,
    Color.ORANGE,
    Color.YELLOW,
    Color.GREEN,
    Color.CYAN,
    Color.BLUE,
    Color.PURPLE,
    Color.PINK,
)
"""The colours a shape is drawn in."""

SHAPES: Final = tuple(Shape)
"""Every shape, in a fixed order."""

BACKGROUNDS: Final = (
    Color.WHITE,
    Color.BLACK,
    Color.GRAY,
    Color.BLUE,
    Color.GREEN,
    Color.RED,
    Color.YELLOW,
    Color.PURPLE,
)
"""The colours a background is painted in; a shape is never drawn in its background's colour."""

SIZE_FRACTION: Final = MappingProxyType({Size.SMALL: 0.38, None: 0.55, Size.LARGE: 0.75})
"""A shape's extent as a fraction of the image side, for each size word (None: no word)."""

POSITION_PHRASE: Final = MappingProxyType(
    {
        Position.LEFT: "on the left",
        Position.RIGHT: "on the right",
        Position.TOP: "at the top",
        Position.BOTTOM: "at the bottom",
        Position.CENTRE: "in the centre",
    }
)
"""How each position word reads in a caption."""

TEMPLATES: Final = (
    "a {color} {shape} on a {background} background",
    "a {size} {color} {shape} on a {background} background",
    "{size} {color} {shape}, {background} background",
    "a {color} {shape} {position}, {background} background",
    "a {size} {color} {shape} {position} on a {background} background",
    "{background} background with a {size} {color} {shape} {position}",
)
"""Caption templates; an absent size or position word is left out of the caption."""

EVALUATION_TEMPLATE: Final = TEMPLATES[0]
"""The one template the held-out prompts are written in."""

Combination = tuple[Color, Shape, Color]
"""A (shape colour, shape, background colour) combination."""

# Chosen by (colour index + 7 * shape index + 3 * background index) % 10 == 0 over the
# orders above (25 of 236 combinations); written out so that a vocabulary edit can never
# silently move a combination between training and evaluation.
HELD_OUT: Final[frozenset[Combination]] = frozenset(
    {
        (Color.RED, Shape.CIRCLE, Color.WHITE),
        (Color.RED, Shape.SQUARE, Color.BLACK),
        (Color.RED, Shape.TRIANGLE, Color.GRAY),
        (Color.RED, Shape.STAR, Color.BLUE),
        (Color.ORANGE, Shape.CIRCLE, Color.BLUE),
        (Color.ORANGE, Shape.SQUARE, Color.GREEN),
        (Color.ORANGE, Shape.TRIANGLE, Color.RED),
        (Color.ORANGE, Shape.STAR, Color.YELLOW),
        (Color.YELLOW, Shape.SQUARE, Color.PURPLE),
        (Color.GREEN, Shape.SQUARE, Color.WHITE),
        (Color.GREEN, Shape.TRIANGLE, Color.BLACK),
        (Color.GREEN, Shape.STAR, Color.GRAY),
        (Color.CYAN, Shape.CIRCLE, Color.GRAY),
        (Color.CYAN, Shape.SQUARE, Color.BLUE),
        (Color.CYAN, Shape.TRIANGLE, Color.GREEN),
        (Color.CYAN, Shape.STAR, Color.RED),
        (Color.BLUE, Shape.CIRCLE, Color.RED),
        (Color.BLUE, Shape.SQUARE, Color.YELLOW),
        (Color.BLUE, Shape.TRIANGLE, Color.PURPLE),
        (Color.PURPLE, Shape.TRIANGLE, Color.WHITE),
        (Color.PURPLE, Shape.STAR, Color.BLACK),
        (Color.PINK, Shape.CIRCLE, Color.BLACK),
        (Color.PINK, Shape.SQUARE, Color.GRAY),
        (Color.PINK, Shape.TRIANGLE, Color.BLUE),
        (Color.PINK, Shape.STAR, Color.GREEN),
    }
)
"""Combinations never drawn for training, kept to test that the model generalises."""


def combinations() -> list[Combination]:
    """Every drawable combination, in vocabulary order (shape and background colours differ)."""
    return [
        (color, shape, background)
        for color in SHAPE_COLORS
        for shape in SHAPES
        for background in BACKGROUNDS
        if color != background
    ]


def known_words() -> frozenset[str]:
    """Every word a training caption uses: the vocabulary and the templates' own words."""
    captions = " ".join((*TEMPLATES, *POSITION_PHRASE.values(), "an"))
    template_words = re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", captions))
    vocabulary = [str(word) for word in (*Color, *Shape, *Size, *Position)]
    return frozenset((*template_words, *vocabulary))


def unknown_words(text: str) -> list[str]:
    """The words of ``text`` no training caption uses, lowercased, first occurrence first."""
    known = known_words()
    found = re.findall(r"[^\W\d_]+", text.lower())
    return list(dict.fromkeys(word for word in found if word not in known))
