from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.shapes.draw import (
    ShapeSpec,
    draw,
    evaluation_prompts,
    evaluation_specs,
    random_spec,
    training_samples,
    training_specs,
)
from backend.shapes.vocab import (
    BACKGROUNDS,
    HELD_OUT,
    RGB,
    SHAPE_COLORS,
    SHAPES,
    TEMPLATES,
    Color,
    Position,
    Shape,
    Size,
    combinations,
)

specs = st.builds(
    ShapeSpec,
    color=st.sampled_from(SHAPE_COLORS),
    shape=st.sampled_from(SHAPES),
    background=st.sampled_from(BACKGROUNDS),
    size=st.none() | st.sampled_from(Size),
    position=st.none() | st.sampled_from(Position),
).filter(lambda spec: spec.color != spec.background)


def _pixels(image: object) -> bytes:
    return np.asarray(image).tobytes()


def test_named_colours_are_far_apart() -> None:
    """Every two named colours are at least 80 apart in RGB, so reading them back is robust."""
    names = list(RGB)
    gaps = [
        float(np.linalg.norm(np.subtract(RGB[a], RGB[b])))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    assert min(gaps) >= 80


def test_held_out_is_about_a_tenth_and_covers_the_vocabulary() -> None:
    """The held-out set is about 10% of real combinations and names every colour, shape and bg."""
    every = combinations()
    assert HELD_OUT.issubset(every)
    assert 0.08 <= len(HELD_OUT) / len(every) <= 0.12
    assert {c for c, _, _ in HELD_OUT} == set(SHAPE_COLORS)
    assert {s for _, s, _ in HELD_OUT} == set(SHAPES)
    assert {b for _, _, b in HELD_OUT} == set(BACKGROUNDS)


def test_training_never_draws_a_held_out_combination_and_covers_the_vocabulary() -> None:
    """Training specs avoid every held-out combination yet use every colour, shape and bg."""
    drawn = [spec for spec, _ in training_specs(seed=3, count=2000)]
    assert not {spec.combination for spec in drawn} & HELD_OUT
    assert all(spec.color != spec.background for spec in drawn)
    assert {spec.color for spec in drawn} == set(SHAPE_COLORS)
    assert {spec.shape for spec in drawn} == set(SHAPES)
    assert {spec.background for spec in drawn} == set(BACKGROUNDS)


def test_training_samples_are_deterministic_for_a_seed() -> None:
    """The same seed gives the same images and captions; another seed gives others."""
    first = [(_pixels(image), caption) for image, caption in training_samples(7, 20)]
    again = [(_pixels(image), caption) for image, caption in training_samples(7, 20)]
    other = [(_pixels(image), caption) for image, caption in training_samples(8, 20)]
    assert first == again
    assert first != other


def test_training_captions_match_their_specs() -> None:
    """Each training sample's caption is its spec's caption, so images and words agree."""
    captions = [caption for _, caption in training_samples(5, 30)]
    assert captions == [caption for _, caption in training_specs(5, 30)]


@settings(max_examples=40, deadline=None)
@given(spec=specs, seed=st.integers(0, 2**32 - 1))
def test_drawing_is_deterministic_for_a_seed(spec: ShapeSpec, seed: int) -> None:
    """Drawing a spec twice with equally seeded generators gives identical pixels."""
    first = draw(spec, 32, rng=np.random.default_rng(seed))
    second = draw(spec, 32, rng=np.random.default_rng(seed))
    assert first.size == (32, 32) and first.mode == "RGB"
    assert _pixels(first) == _pixels(second)


@settings(max_examples=60, deadline=None)
@given(spec=specs, template=st.sampled_from(TEMPLATES))
def test_captions_name_the_spec_and_read_cleanly(spec: ShapeSpec, template: str) -> None:
    """A caption names the colour, shape and background, with no doubled spaces or stray commas."""
    caption = spec.caption(template)
    words = caption.replace(",", " ").split()
    assert {spec.color, spec.shape, spec.background} <= set(words)
    assert "  " not in caption and " ," not in caption and caption == caption.strip()
    assert " a orange" not in f" {caption}"


def test_evaluation_prompts_are_the_held_out_combinations_in_one_template() -> None:
    """The evaluation prompts are the held-out combinations, fixed order, one template."""
    prompts = evaluation_prompts()
    assert len(prompts) == len(HELD_OUT) == len(set(prompts))
    assert {spec.combination for spec in evaluation_specs()} == HELD_OUT
    assert prompts == evaluation_prompts()
    assert "an orange circle on a blue background" in prompts
    assert all(p.endswith(" background") and " on a" in p for p in prompts)


def test_random_spec_respects_a_held_out_set() -> None:
    """A spec drawn with a held-out set is never one of its combinations."""
    rng = np.random.default_rng(0)
    held = frozenset({(Color.RED, Shape.STAR, Color.BLUE)})
    drawn = {random_spec(rng, held).combination for _ in range(3000)}
    assert not drawn & held
