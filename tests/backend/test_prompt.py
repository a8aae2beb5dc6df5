"""The prompt parser: flags to a validated spec, clear errors, and a lossless round trip."""

from __future__ import annotations

import math
import random
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

from backend.errors import PromptError
from backend.models import SCHEDULER_NAMES, SEED_MAX, SIZE_MULTIPLE, JobSpec, Speed
from backend.prompt import KNOWN_FLAGS, PromptLimits, format_prompt, image_size, parse_prompt

DEFAULT_SEED = random.Random(0).randrange(SEED_MAX + 1)
PROPERTY = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


def parse(text: str, limits: PromptLimits | None = None) -> JobSpec:
    return parse_prompt(text, limits or PromptLimits(), rng=random.Random(0))


GOOD_CASES: list[tuple[str, dict[str, Any]]] = [
    ("a red fox", {"prompt": "a red fox", "width": 512, "height": 512, "aspect": (1, 1)}),
    ("fox --ar 16:9", {"aspect": (16, 9), "width": 640, "height": 384}),
    ("fox --ar 32:18", {"aspect": (16, 9), "width": 640, "height": 384}),
    ("fox --ar 9:16", {"aspect": (9, 16), "width": 384, "height": 640}),
    ("fox --ar 2:2", {"aspect": (1, 1), "width": 512, "height": 512}),
    ("fox --ar 4:1", {"aspect": (4, 1), "width": 1024, "height": 256}),
    ("fox --seed 42", {"seed": 42}),
    ("fox --seed 0", {"seed": 0}),
    (f"fox --seed {SEED_MAX}", {"seed": SEED_MAX}),
    ("fox --seed 007", {"seed": 7}),
    ("fox --no blur, text", {"negative_prompt": "blur, text"}),
    ("fox --no a,,b ,  c,", {"negative_prompt": "a, b, c"}),
    ("fox --no dark forest --steps 20", {"negative_prompt": "dark forest", "steps": 20}),
    ("fox --steps 1", {"steps": 1}),
    ("fox --steps 150", {"steps": 150}),
    ("fox --cfg 7.5", {"guidance": 7.5}),
    ("fox --guidance 12", {"guidance": 12.0}),
    ("fox --cfg 0", {"guidance": 0.0}),
    ("fox --cfg 7.555", {"guidance": round(7.555, 2)}),
    ("fox --fast", {"speed": Speed.FAST}),
    ("fox --relax", {"speed": Speed.RELAX}),
    ("fox --turbo", {"speed": Speed.TURBO}),
    ("fox --model SD-1.5_base", {"model": "sd-1.5_base"}),
    ("fox --n 1", {"n": 1}),
    ("fox --n 8", {"n": 8}),
    ("fox --scheduler dpmpp_2m", {"scheduler": "dpmpp_2m"}),
    ("fox --scheduler DPMPP-2M-Karras", {"scheduler": "dpmpp_2m_karras"}),
    ("fox --scheduler euler-a", {"scheduler": "euler_a"}),
    ("fox —ar 16:9 —seed 5", {"aspect": (16, 9), "seed": 5}),
    ("fox –seed 5 –fast", {"seed": 5, "speed": Speed.FAST}),
    ("--seed 5 --fast a fox", {"prompt": "a fox", "seed": 5}),
    ("a --seed 5 red --steps 9 fox", {"prompt": "a red fox", "seed": 5, "steps": 9}),
    ("fox --SEED 5 --Ar 2:1 --FAST", {"seed": 5, "aspect": (2, 1), "speed": Speed.FAST}),
    ("  a\tred\n\nfox  ", {"prompt": "a red fox"}),
    ("a fox -- running — fast", {"prompt": "a fox -- running — fast"}),
    ("a::2 fox, (detailed) -wide", {"prompt": "a::2 fox, (detailed) -wide"}),
    ("fox", {"seed": DEFAULT_SEED, "n": 4, "negative_prompt": "", "steps": None}),
    ("fox", {"guidance": None, "speed": None, "model": None, "scheduler": None}),
    # Dash look-alikes and fullwidth forms are read as flags.
    ("fox －－seed 5", {"prompt": "fox", "seed": 5}),
    ("fox －－ｓｅｅｄ　５　－－ＡＲ　１６：９", {"prompt": "fox", "seed": 5, "aspect": (16, 9)}),
    ("fox −−seed 5 ﹣﹣fast", {"prompt": "fox", "seed": 5, "speed": Speed.FAST}),
    ("fox ‐‐steps 9 ‑‑n 2 ‒‒cfg 3", {"prompt": "fox", "steps": 9, "n": 2, "guidance": 3.0}),
    ("fox ―seed 5 ﹘relax", {"prompt": "fox", "seed": 5, "speed": Speed.RELAX}),
    ("fox －－no ｂｌｕｒ", {"prompt": "fox", "negative_prompt": "ｂｌｕｒ"}),
    ("a −5 °C −− fox ‐wide", {"prompt": "a −5 °C −− fox ‐wide"}),
    ("〜〜ファンタジー〜〜 ゠゠", {"prompt": "〜〜ファンタジー〜〜 ゠゠"}),
    # Invisible characters hide no flag and are not kept as text.
    ("fox \u200b--seed 5 \u2060—fast", {"prompt": "fox", "seed": 5, "speed": Speed.FAST}),
    ("fox \u200d--seed 5 \ufe0f\u3164--n 2", {"prompt": "fox", "seed": 5, "n": 2}),
    ("a\u200b red \u200e fox\ufeff \u2800", {"prompt": "a red fox"}),
    ("fox --no blur,\u200d, \u2066dark\u2069", {"negative_prompt": "blur, dark"}),
    ("שלום\u200f עולם \u202bfox\u202c", {"prompt": "שלום עולם fox"}),
    # Joiners and variation selectors inside a word are part of it (emoji, scripts).
    (
        "👨\u200d👩\u200d👧 ❤\ufe0f می\u200cخواهم",
        {"prompt": "👨\u200d👩\u200d👧 ❤\ufe0f می\u200cخواهم"},
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_CASES)
def test_parse_accepts_documented_forms(text: str, expected: dict[str, Any]) -> None:
    """Each documented flag and spelling lands in the right spec field."""
    spec = parse(text)
    for name, value in expected.items():
        assert getattr(spec, name) == value, name


def test_missing_seed_is_drawn_from_rng_and_recorded() -> None:
    """Without --seed the seed comes from the injected rng and is kept in the spec."""
    rng = random.Random(1234)
    expected = random.Random(1234).randrange(SEED_MAX + 1)
    spec = parse_prompt("fox", rng=rng)
    assert spec.seed == expected
    assert f"--seed {expected}" in format_prompt(spec)


def test_missing_seed_defaults_to_system_randomness() -> None:
    """With no rng given, two parses draw different seeds (collision odds 2**-32)."""
    assert parse_prompt("fox").seed != parse_prompt("fox").seed


def test_refused_prompt_draws_no_seed() -> None:
    """A prompt that fails validation leaves the caller's rng untouched."""
    rng = random.Random(5)
    before = rng.getstate()
    with pytest.raises(PromptError):
        parse_prompt("fox --steps 0", rng=rng)
    assert rng.getstate() == before


def test_default_n_comes_from_limits() -> None:
    """Without --n the spec asks for limits.default_n samples."""
    assert parse("fox", PromptLimits(default_n=2)).n == 2


def test_pixel_budget_scales_the_size() -> None:
    """A larger budget gives a larger image of the same ratio."""
    spec = parse("fox --ar 16:9", PromptLimits(pixel_budget=1024 * 1024))
    assert (spec.width, spec.height) == (1344, 768)


def test_spec_is_frozen() -> None:
    """The parsed spec cannot be changed after validation."""
    spec = parse("fox")
    with pytest.raises(AttributeError):
        spec.seed = 1  # type: ignore[misc]


def test_format_writes_flags_in_fixed_order() -> None:
    """format_prompt writes the text, then every set flag in one documented order."""
    spec = parse(
        "--scheduler euler --n 2 --model m --turbo --guidance 3 --steps 4 --no x "
        "--seed 9 --ar 3:2 fox"
    )
    assert format_prompt(spec) == (
        "fox --ar 3:2 --seed 9 --no x --steps 4 --cfg 3 --turbo --model m --n 2 --scheduler euler"
    )


BAD_CASES: list[tuple[str, str | None, str]] = [
    ("fox --xyz", "--xyz", "known flags: --ar, --seed"),
    ("fox —Style raw", "--style", "known flags:"),
    ("fox --seed=5", "--seed=5", "--name"),
    ("fox —1990", "—1990", "--name"),
    ("fox --seed", "--seed", "expected --seed N with 0 <= N <= 4294967295"),
    ("fox --seed --fast", "--seed", "expected --seed N"),
    ("fox --no", "--no", "expected --no"),
    ("fox --no --fast", "--no", "expected --no"),
    ("fox --no , ,", "--no", "expected --no"),
    ("fox --no a,--x", "--no", "no flags"),
    ("fox --seed abc", "--seed", "expected --seed N"),
    ("fox --seed -1", "--seed", "0 <= N <= 4294967295"),
    (f"fox --seed {2**40}", "--seed", "0 <= N <= 4294967295"),
    (f"fox --seed {SEED_MAX + 1}", "--seed", "0 <= N <= 4294967295"),
    ("fox --seed " + "9" * 4500, "--seed", "0 <= N <= 4294967295"),
    ("fox --seed +3", "--seed", "expected --seed N"),
    ("fox --seed ٣", "--seed", "expected --seed N"),
    ("fox --seed 1e3", "--seed", "expected --seed N"),
    ("fox --ar 0:1", "--ar", "W, H >= 1, from 1:4 to 4:1"),
    ("fox --ar 100:1", "--ar", "from 1:4 to 4:1"),
    ("fox --ar 1:5", "--ar", "from 1:4 to 4:1"),
    ("fox --ar 16x9", "--ar", "expected --ar W:H"),
    ("fox --ar 16:9:1", "--ar", "expected --ar W:H"),
    ("fox --steps 0", "--steps", "1 <= N <= 150"),
    ("fox --steps 151", "--steps", "1 <= N <= 150"),
    ("fox --cfg 30.01", "--cfg", "0 <= X <= 30"),
    ("fox --guidance 99", "--guidance", "expected --guidance X with 0 <= X <= 30"),
    ("fox --cfg -1", "--cfg", "0 <= X <= 30"),
    ("fox --cfg .5", "--cfg", "0 <= X <= 30"),
    ("fox --cfg nan", "--cfg", "0 <= X <= 30"),
    ("fox --n 0", "--n", "1 <= N <= 8"),
    ("fox --n 9", "--n", "1 <= N <= 8"),
    ("fox --model ../etc", "--model", "expected --model NAME"),
    ("fox --model " + "m" * 65, "--model", "expected --model NAME"),
    ("fox --scheduler karras", "--scheduler", "one of euler, euler_a, dpmpp_2m"),
    ("fox --fast --relax", "--relax", "use one of --fast, --relax, --turbo"),
    ("fox --turbo --turbo", "--turbo", "give --turbo once"),
    ("fox --seed 1 --seed 2", "--seed", "give --seed once"),
    ("fox --cfg 1 --guidance 2", "--guidance", "give only one of --cfg, --guidance"),
    ("", None, "write what to draw"),
    ("   \n\t ", None, "write what to draw"),
    ("--ar 16:9 --seed 5 --fast", None, "write what to draw"),
    ("--no everything at all", None, "write what to draw"),
    ("x" * 1001, None, "at most 1000 characters"),
    ("x " * 3000, None, "at most 1000 characters"),
    ("fox\x00bar", None, "printable text only"),
    ("fox \x7f --seed 1", None, "printable text only"),
    ("fox \ud800", None, "printable text only"),
    # A prompt that shows nothing once invisible characters are left out is empty.
    ("\u200b", None, "write what to draw"),
    ("\u200b\u200c\u200d\u2060\ufeff\u00ad", None, "write what to draw"),
    ("\u200e\u200f \u2066\u2069 \u202a\u202c \u061c", None, "write what to draw"),
    ("\u3164 \u115f\u1160 \uffa0 \u2800 \ufe0f \U000e0041", None, "write what to draw"),
    ("--seed 5 \u200b --fast \u200d", None, "write what to draw"),
    ("fox --no \u200b, \u200d", "--no", "expected --no"),
    # Bidi overrides show text in another order than it is stored.
    ("fox \u202eraw", None, "without direction overrides"),
    ("\u202dfox\u202c", None, "without direction overrides"),
    # Look-alike dashes start a flag: unknown and malformed ones are refused.
    ("fox －－xyz", "--xyz", "known flags:"),
    ("fox —ｓｔｙｌｅ raw", "--style", "known flags:"),
    ("fox −−xyz", "--xyz", "known flags:"),
    ("fox ﹣﹣xyz", "--xyz", "known flags:"),
    ("fox ‐‐xyz", "--xyz", "known flags:"),
    ("fox ‑‑xyz", "--xyz", "known flags:"),
    ("fox ‒‒xyz", "--xyz", "known flags:"),
    ("fox ―xyz", "--xyz", "known flags:"),
    ("fox ﹘xyz", "--xyz", "known flags:"),
    ("fox –xyz", "--xyz", "known flags:"),
    ("fox －－seed＝5", "－－seed＝5", "--name"),
    ("fox －－シード 5", "－－シード", "--name"),
    ("fox －－seed ５x", "--seed", "expected --seed N"),
    ("fox －－seed −１", "--seed", "expected --seed N"),
]


@pytest.mark.parametrize(("text", "flag", "allowed"), BAD_CASES)
def test_parse_refuses_bad_input_with_one_clear_message(
    text: str, flag: str | None, allowed: str
) -> None:
    """Bad input raises one PromptError naming the flag and the allowed form."""
    with pytest.raises(PromptError) as caught:
        parse(text)
    error = caught.value
    assert error.flag == flag
    assert allowed in error.allowed
    assert str(error) == f"{flag or 'prompt'}: {error.problem}; {error.allowed}"
    assert "\n" not in str(error)
    assert len(str(error)) < 400


def test_budget_too_small_for_ratio_is_refused() -> None:
    """A ratio that leaves a side under 64 pixels within the budget names --ar."""
    with pytest.raises(PromptError) as caught:
        parse("fox --ar 4:1", PromptLimits(pixel_budget=64 * 64))
    assert caught.value.flag == "--ar"
    assert "64 pixels" in caught.value.problem


def test_limits_shape_the_messages() -> None:
    """Configured limits appear in the allowed form of the error."""
    limits = PromptLimits(max_steps=40, max_aspect=2.5)
    with pytest.raises(PromptError, match=r"1 <= N <= 40"):
        parse("fox --steps 41", limits)
    with pytest.raises(PromptError, match=r"from 1:2.5 to 2.5:1"):
        parse("fox --ar 3:1", limits)


def test_negative_prompt_has_its_own_length_limit() -> None:
    """--no is limited to max_prompt_chars on its own, not shared with the text."""
    limits = PromptLimits(max_prompt_chars=10)
    assert parse("fox --no " + "a" * 10, limits).negative_prompt == "a" * 10
    with pytest.raises(PromptError) as caught:
        parse("fox --no " + "a" * 11, limits)
    assert caught.value.flag == "--no"


@pytest.mark.parametrize(
    ("aspect", "size"),
    [((1, 1), (512, 512)), ((16, 9), (640, 384)), ((4, 1), (1024, 256)), ((2, 3), (384, 576))],
)
def test_image_size_table(aspect: tuple[int, int], size: tuple[int, int]) -> None:
    """Known ratios resolve to known sizes within the default 512x512 budget."""
    assert image_size(aspect, 512 * 512) == size


@PROPERTY
@given(across=st.integers(1, 64), down=st.integers(1, 64), budget=st.integers(4096, 4096 * 4096))
def test_image_size_fits_budget_in_multiples(across: int, down: int, budget: int) -> None:
    """Sizes are multiples of 64, within the budget, and the largest such for the ratio."""
    width, height = image_size((across, down), budget)
    assert width % SIZE_MULTIPLE == 0
    assert height % SIZE_MULTIPLE == 0
    assert width * height <= budget
    # width is the largest multiple of 64 with width**2 <= budget * across / down; same for
    # height with the ratio inverted.
    assert width**2 * down <= budget * across < (width + SIZE_MULTIPLE) ** 2 * down
    assert height**2 * across <= budget * down < (height + SIZE_MULTIPLE) ** 2 * across


# --- property tests --------------------------------------------------------------------------

# Two hyphens or one long dash start a flag, in any of these forms.
HYPHENS = "-\u2010\u2011\u2012\u2212\ufe63\uff0d"
LONG_DASHES = "\u2013\u2014\u2015\ufe58\u2e3a\u2e3b"
DASHES = HYPHENS + LONG_DASHES
PREFIXES = [a + b for a in HYPHENS for b in HYPHENS] + list(LONG_DASHES)
BIDI_OVERRIDES = "\u202d\u202e"
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u2066\u2067\u2068\u2069"
# Format characters that show nothing: left out of any accepted text.
# U+2060 to U+206F whole, as the parser drops them: the reserved U+2065 included.
DROPPED = BIDI_CONTROLS + "\u00ad\u180e\u200b\ufeff" + "".join(map(chr, range(0x2060, 0x2070)))
# Characters that show nothing on their own but belong to the word they are in.
SILENT = (
    "\u200c\u200d\u034f\u115f\u1160\u17b4\u180b\u3164\uffa0\u2800"
    "\ufe00\ufe0f\U000e0001\U000e0041\U000e007f\U000e0100"
)
INVISIBLE = DROPPED + SILENT
WORD_CHARS = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    blacklist_characters="\x85" + DROPPED + BIDI_OVERRIDES,
)


def is_invisible(char: str) -> bool:
    """Shows nothing on its own (Unicode's default-ignorable code points, fillers)."""
    code = ord(char)
    return char in INVISIBLE or 0xE0000 <= code <= 0xE0FFF or 0xFE00 <= code <= 0xFE0F


def is_flag_like(token: str) -> bool:
    starts = token[:2] in PREFIXES or token[:1] in LONG_DASHES
    return starts and not set(token) <= set(DASHES)


words = st.text(WORD_CHARS, min_size=1, max_size=10).filter(
    lambda w: not any(c.isspace() for c in w) and not is_flag_like(w) and not is_invisible(w[0])
)
# Within PromptSettings' bounds, default_n <= max_n as the settings check enforces.
limits_st = st.integers(1, 16).flatmap(
    lambda max_n: st.builds(
        PromptLimits,
        max_prompt_chars=st.integers(1, 2000),
        pixel_budget=st.integers(64 * 64, 2048 * 2048),
        max_aspect=st.floats(1.0, 16.0),
        max_steps=st.integers(1, 1000),
        max_guidance=st.floats(0.0, 100.0),
        default_n=st.integers(1, max_n),
        max_n=st.just(max_n),
    )
)
flag_names = st.sampled_from([f[2:] for f in KNOWN_FLAGS] + ["xyz", "seed=5", "1", "", "no-"])
flag_tokens = st.builds(
    lambda prefix, name, upper: prefix + (name.upper() if upper else name),
    st.sampled_from(["--", "—", "–", "-", "---", "—-", "", "－－", "−−", "\u200b--", "‐"]),
    flag_names,
    st.booleans(),
)
values = st.one_of(
    st.integers(-10, 2**41).map(str),
    st.decimals(-5, 200, places=3, allow_nan=False).map(str),
    st.builds(lambda a, b: f"{a}:{b}", st.integers(0, 120), st.integers(0, 120)),
    st.sampled_from([*SCHEDULER_NAMES, "euler-a", "karras", "tiny", "a,b", ",", "—", "--"]),
    st.text(max_size=6),
)
mixed_prompts = st.lists(st.one_of(words, flag_tokens, values), max_size=14).map(" ".join)


@PROPERTY
@given(text=st.text(max_size=300), limits=limits_st)
def test_any_text_gives_a_spec_or_a_prompt_error(text: str, limits: PromptLimits) -> None:
    """On arbitrary text the parser raises nothing but PromptError."""
    try:
        spec = parse(text, limits)
    except PromptError:
        return
    assert isinstance(spec, JobSpec)


@PROPERTY
@given(text=mixed_prompts, limits=limits_st)
def test_flag_soup_gives_a_spec_or_a_prompt_error(text: str, limits: PromptLimits) -> None:
    """On words mixed with valid and broken flags the parser raises nothing but PromptError."""
    try:
        spec = parse(text, limits)
    except PromptError:
        return
    assert parse(format_prompt(spec), limits) == spec


@st.composite
def valid_prompts(draw: st.DrawFn) -> tuple[str, PromptLimits]:
    """Prompt text with in-range flags in any order and spelling, and the limits it obeys."""
    limits = draw(limits_st)
    groups = [[w] for w in draw(st.lists(words, min_size=1, max_size=6))]
    options = {
        "ar": st.builds(
            lambda a, b, k: f"{a * k}:{b * k}",
            st.integers(1, 16),
            st.integers(1, 16),
            st.integers(1, 4),
        ),
        "seed": st.integers(0, SEED_MAX).map(str),
        "no": st.lists(words, min_size=1, max_size=4).map(",".join),
        "steps": st.integers(1, limits.max_steps).map(str),
        draw(st.sampled_from(["cfg", "guidance"])): st.integers(
            0, math.floor(limits.max_guidance * 1000)
        ).map(lambda i: f"{i / 1000:.3f}"),
        "model": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
        "n": st.integers(1, limits.max_n).map(str),
        "scheduler": st.sampled_from([*SCHEDULER_NAMES, "euler-a", "DPMPP-2M"]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(options)), unique=True)):
        prefix = draw(st.sampled_from(PREFIXES))
        groups.append([prefix + name, draw(options[name])])
    speed = draw(st.sampled_from(["", "--fast", "—relax", "--TURBO"]))
    if speed:
        groups.append([speed])
    return " ".join(" ".join(g) for g in draw(st.permutations(groups))), limits


@PROPERTY
@given(case=valid_prompts())
def test_format_of_parse_parses_back_to_the_same_spec(case: tuple[str, PromptLimits]) -> None:
    """parse(format(parse(x))) == parse(x) whenever parse(x) succeeds."""
    text, limits = case
    try:
        spec = parse(text, limits)
    except PromptError:
        reject()
    assert parse(format_prompt(spec), limits) == spec


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    """Any spec the parser can produce under the default limits."""
    limits = PromptLimits()
    across, down = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    divisor = math.gcd(across, down)
    aspect = (across // divisor, down // divisor)
    if max(aspect) > limits.max_aspect * min(aspect):
        reject()
    width, height = image_size(aspect, limits.pixel_budget)
    plain_words = words.filter(lambda w: "," not in w)
    items = st.lists(plain_words, min_size=1, max_size=3).map(" ".join)
    return JobSpec(
        prompt=" ".join(draw(st.lists(words, min_size=1, max_size=8))),
        seed=draw(st.integers(0, SEED_MAX)),
        width=width,
        height=height,
        aspect=aspect,
        negative_prompt=", ".join(draw(st.lists(items, max_size=3))),
        steps=draw(st.none() | st.integers(1, limits.max_steps)),
        guidance=draw(st.none() | st.integers(0, 3000).map(lambda i: i / 100)),
        speed=draw(st.none() | st.sampled_from(Speed)),
        model=draw(st.none() | st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)),
        n=draw(st.integers(1, limits.max_n)),
        scheduler=draw(st.none() | st.sampled_from(SCHEDULER_NAMES)),
    )


@PROPERTY
@given(spec=specs())
def test_formatted_spec_parses_back_identical(spec: JobSpec) -> None:
    """Every valid spec survives format_prompt then parse_prompt unchanged."""
    assert parse(format_prompt(spec)) == spec


# --- invisible characters and look-alike dashes ----------------------------------------------


def widen(text: str) -> str:
    """ASCII as a fullwidth keyboard types it."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


blanks = st.text(st.sampled_from(INVISIBLE + " \t\n\u3000"), max_size=12)


@PROPERTY
@given(before=blanks, flags=st.sampled_from(["", "--seed 5 —fast", "－－ar 2:1"]), after=blanks)
def test_text_that_shows_nothing_is_refused_as_empty(before: str, flags: str, after: str) -> None:
    """A prompt of invisible characters and spaces alone, flags aside, is refused as empty."""
    with pytest.raises(PromptError) as caught:
        parse(f"{before} {flags} {after}")
    assert (caught.value.flag, caught.value.problem) == (None, "no prompt text")


@PROPERTY
@given(
    parts=st.lists(
        st.one_of(st.text(max_size=8), st.sampled_from(list(DROPPED + SILENT + BIDI_OVERRIDES))),
        max_size=20,
    ).map("".join)
)
@example(parts="0,\u200c")  # a joiner after a comma once started a phrase
def test_accepted_text_holds_no_bidi_control_or_hidden_character(parts: str) -> None:
    """No accepted prompt or negative prompt holds a bidi control or a character the
    parser drops, and a bidi override is never accepted."""
    try:
        spec = parse(parts + " --no " + parts)
    except PromptError:
        return
    for text in (spec.prompt, spec.negative_prompt):
        assert not set(text) & set(DROPPED + BIDI_OVERRIDES)
        assert all(not is_invisible(word[0]) for word in text.replace(",", " ").split())


@PROPERTY
@given(case=valid_prompts(), data=st.data())
def test_look_alike_dashes_and_fullwidth_flags_read_as_ascii(
    case: tuple[str, PromptLimits], data: st.DataObject
) -> None:
    """A prompt whose flags are written with any look-alike dash, a fullwidth name or
    an invisible character in front parses exactly as with ASCII flags."""
    text, limits = case
    rewritten = []
    for token in text.split():
        if is_flag_like(token):
            name = token[1:] if token[0] in LONG_DASHES else token[2:]
            lead = data.draw(st.sampled_from(["", "\u200b", "\u200d", "\ufeff"]))
            prefix = data.draw(st.sampled_from(PREFIXES))
            token = lead + prefix + data.draw(st.sampled_from([name, widen(name)]))
        rewritten.append(token)
    assert outcome(" ".join(rewritten), limits) == outcome(text, limits)


def outcome(text: str, limits: PromptLimits) -> JobSpec | tuple[str | None, str]:
    """The spec, or the flag and problem of the refusal."""
    try:
        return parse(text, limits)
    except PromptError as refused:
        return refused.flag, refused.problem


def folded(token: str) -> str:
    """A token as it looks: compatibility forms as ASCII, every look-alike dash as one."""
    token = unicodedata.normalize("NFKC", token).lstrip("".join(INVISIBLE))
    return token.translate({ord(c): "-" for c in HYPHENS} | {ord(c): "—" for c in LONG_DASHES})


@PROPERTY
@given(
    text=st.lists(
        st.one_of(
            words,
            st.builds(
                lambda lead, prefix, name: lead + prefix + name,
                st.sampled_from(["", "\u200b", "\u200d", "\u2066", "\ufe0f"]),
                st.sampled_from([*PREFIXES, "-", "〜〜", "゠", "ｰｰ", "\u2043\u2043"]),
                st.sampled_from(
                    ["seed", "ｓｅｅｄ", "FAST", "ｆａｓｔ", "xyz", "ｘ", "シード", "1"]
                ),
            ),
        ),
        max_size=10,
    ).map(" ".join)
)
def test_no_flag_is_kept_as_prompt_text(text: str) -> None:
    """Whatever dash or width a flag is written with, it is read as a flag or refused,
    never kept in the prompt text."""
    try:
        spec = parse(text)
    except PromptError:
        return
    for token in spec.prompt.split():
        shown = folded(token)
        assert not (shown.startswith("--") or shown.startswith("—")) or set(shown) <= set("-—")
