"""Each model's native size for --ar, and the note about words the shapes model never saw."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import backend.shapes.shipped as shipped
from backend.catalog import ModelCatalog, prompt_limits
from backend.errors import PromptError
from backend.models import SIZE_MULTIPLE
from backend.prompt import PromptLimits, image_size, parse_prompt
from cli import main
from config.settings import Settings


def _size(text: str, settings: Settings | None = None) -> tuple[int, int]:
    spec = parse_prompt(text, prompt_limits(settings or Settings()))
    return spec.width, spec.height


def test_limits_carry_each_models_native_size() -> None:
    """prompt_limits lists every declared model's (budget, multiple) and the default model."""
    limits = prompt_limits(Settings())
    assert limits.default_model == "shapes"
    assert dict(limits.native_sizes) == {"shapes": (32 * 32, 8), "tiny": (512 * 512, 64)}
    assert limits.pixel_budget == Settings().prompt.pixel_budget


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("a red circle", (32, 32)),
        ("a red circle --ar 1:1", (32, 32)),
        ("a red circle --ar 16:9", (40, 24)),
        ("a red circle --ar 9:16", (24, 40)),
        ("a red circle --ar 4:1", (64, 16)),
        ("a red circle --model shapes --ar 16:9", (40, 24)),
        ("a red circle --model tiny --ar 16:9", (640, 384)),
        ("a red circle --model tiny", (512, 512)),
    ],
)
def test_default_settings_resolve_ar_per_model(text: str, size: tuple[int, int]) -> None:
    """The default shapes model resolves --ar at 32x32 in eights; tiny keeps SD's sizes."""
    assert _size(text) == size


def test_default_model_setting_decides_the_size_rule() -> None:
    """With tiny as the default model a prompt without --model gets SD sizes."""
    settings = Settings(engine={"default_model": "tiny"})
    assert _size("a red circle --ar 16:9", settings) == (640, 384)
    assert _size("a red circle --model shapes --ar 16:9", settings) == (40, 24)


def test_model_without_native_size_uses_the_prompt_budget() -> None:
    """A model the limits know nothing of resolves at pixel_budget in multiples of 64."""
    limits = PromptLimits(native_sizes={"shapes": (1024, 8)}, default_model="shapes")
    assert limits.size_rule("other") == (limits.pixel_budget, SIZE_MULTIPLE)
    assert limits.size_rule(None) == (1024, 8)
    assert PromptLimits().size_rule(None) == (512 * 512, SIZE_MULTIPLE)
    spec = parse_prompt("a red circle --model other --ar 16:9", limits)
    assert (spec.width, spec.height) == (640, 384)


def test_too_small_a_native_budget_is_a_prompt_error() -> None:
    """A ratio that leaves a side under the model's multiple is refused, naming --ar."""
    limits = PromptLimits(native_sizes={"small": (16 * 16, 16)}, default_model="small")
    with pytest.raises(PromptError) as caught:
        parse_prompt("a red circle --ar 4:1", limits)
    assert caught.value.flag == "--ar"
    assert "under 16 pixels" in str(caught.value) and "256 pixels" in str(caught.value)


@given(
    budget=st.integers(min_value=64, max_value=4096 * 4096),
    multiple=st.sampled_from([8, 16, 32, 64, 128, 256]),
    across=st.integers(min_value=1, max_value=64),
    down=st.integers(min_value=1, max_value=64),
)
def test_image_size_is_the_largest_multiple_within_budget(
    budget: int, multiple: int, across: int, down: int
) -> None:
    """Each side is the largest multiple whose square fits budget x its share of the ratio."""
    width, height = image_size((across, down), budget, multiple)
    assert width % multiple == 0 and height % multiple == 0
    assert width * height <= budget
    ratio = Fraction(across, down)
    assert width**2 <= budget * ratio < (width + multiple) ** 2
    assert height**2 <= budget / ratio < (height + multiple) ** 2


def test_unknown_words_for_the_shapes_model() -> None:
    """The catalog names the prompt's words no shapes caption used, negative prompt too."""
    catalog = ModelCatalog(Settings())
    limits = prompt_limits(Settings())

    def unknown(text: str) -> list[str]:
        return catalog.unknown_words(parse_prompt(text, limits))

    assert unknown("a dragon on a blue background") == ["dragon"]
    assert unknown("A Dragon and a DRAGON, blue background --no wings") == [
        "dragon",
        "and",
        "wings",
    ]
    assert unknown("a red circle on a white background") == []
    assert unknown("a small pink star at the top, gray background --no square") == []
    assert unknown("a dragon on a blue background --model tiny") == []


def test_unknown_words_only_for_builtin_shapes() -> None:
    """A model named shapes that loads from elsewhere has no known vocabulary: no words."""
    settings = Settings(
        engine={"models": {"shapes": {"source": "/models/other"}, "tiny": {"source": "x/y"}}}
    )
    spec = parse_prompt("a dragon on a blue background", prompt_limits(settings))
    assert ModelCatalog(settings).unknown_words(spec) == []


@pytest.mark.parametrize(
    ("prompt", "note"),
    [
        (
            "a dragon on a blue background --n 1",
            "imagine: note: model 'shapes' never saw the words dragon; "
            "it draws whatever it makes of them",
        ),
        ("a red circle on a white background --n 1", None),
    ],
)
def test_generate_notes_unknown_words(
    shapes_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prompt: str,
    note: str | None,
) -> None:
    """`imagine generate` prints one note naming unknown words, before the model loads."""
    # An empty model folder stops the job at the model check, right after the note.
    monkeypatch.setattr(shipped, "PIPELINE_DIR", tmp_path / "no-model")
    assert main(["generate", prompt]) == 1
    lines = capsys.readouterr().err.splitlines()
    notes = [line for line in lines if line.startswith("imagine: note:")]
    assert notes == ([note] if note else [])
    failed = next(index for index, line in enumerate(lines) if line.startswith("imagine: failed"))
    assert "imagine_model.json is missing" in lines[failed]
    if note:
        assert lines.index(note) < failed
