"""Midjourney-style prompt text to a validated :class:`JobSpec`, and back.

``a red fox --ar 16:9 --seed 42 --no blur, text --steps 30 --cfg 7.5 --fast`` parses to a
spec; :func:`format_prompt` writes a spec so that it parses back to the same spec. Every
problem raises one :class:`PromptError` naming the flag and what it accepts.

Pure: stdlib and domain types only, so the bot can parse without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import unicodedata
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType

from backend.errors import PromptError
from backend.models import SCHEDULER_NAMES, SEED_MAX, SIZE_MULTIPLE, JobSpec, Speed

# Phones turn "--" into an em dash (and some keyboards into an en dash); fullwidth
# keyboards type "－－", and autocorrection or a paste gives "‐‐" or "−−". Two of
# _HYPHENS or one of _LONG_DASHES start a flag; a token of dashes alone is punctuation.
# Wave dashes and the katakana double hyphen are left out: they start Japanese text.
_HYPHENS = "-\u2010\u2011\u2012\u2212\ufe63\uff0d"
_LONG_DASHES = "\u2013\u2014\u2015\ufe58\u2e3a\u2e3b"
_DASHES = frozenset(_HYPHENS + _LONG_DASHES)
_PREFIX = re.compile(f"[{_HYPHENS}]{{2}}|[{_LONG_DASHES}]")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# Fullwidth ASCII (U+FF01..U+FF5E) as ASCII: "－－ｓｅｅｄ　５" is "--seed 5".
_NARROW = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
# Format characters that carry no text: the soft hyphen, the zero-width space, the
# word joiner and invisible operators, the byte-order mark, and the bidi marks,
# embeddings and isolates. Dropped, so that none can hide a flag, pass for prompt text
# or reach the model.
_DROPPED = re.compile("[\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202c\u2060-\u206f\ufeff]")
# Bidi overrides show characters in an order other than the one stored: a prompt that
# reads one way and says another. Refused.
_OVERRIDES = frozenset("\u202d\u202e")
# What is left of Unicode's default-ignorable characters (joiners, variation selectors,
# fillers, tags) and the blank braille pattern. They show nothing on their own, so a
# token is read from its first visible character; a token of them alone is dropped.
_INVISIBLE = (
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200c\u200d\u2800\u3164"
    "\ufe00-\ufe0f\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]+"
)
_LEADING_INVISIBLE = re.compile("^" + _INVISIBLE)
# A comma ends a phrase as a space does: the next one starts at a visible character too.
_INVISIBLE_AFTER_COMMA = re.compile("(?<=,)" + _INVISIBLE)
# re's [0-9] is ASCII only, so "٣" is refused like "-1", "+3" and "1e3".
_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NEGATIVE = re.compile(r"-[0-9]+(?:\.[0-9]+)?")
_RATIO = re.compile(r"([0-9]+):([0-9]+)")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Longer digit runs are out of range anyway; refusing them early avoids costly int().
_MAX_DIGITS = 20
_SHOWN_CHARS = 40
_GUIDANCE_PLACES = 2

_SPEEDS = {speed.value: speed for speed in Speed}
# Value flags and the JobSpec field each fills; --cfg and --guidance share one.
_FIELDS = {
    "--ar": "aspect",
    "--seed": "seed",
    "--no": "negative_prompt",
    "--steps": "steps",
    "--cfg": "guidance",
    "--guidance": "guidance",
    "--model": "model",
    "--n": "n",
    "--scheduler": "scheduler",
}
KNOWN_FLAGS: tuple[str, ...] = (
    "--ar",
    "--seed",
    "--no",
    "--steps",
    "--cfg",
    "--guidance",
    "--fast",
    "--relax",
    "--turbo",
    "--model",
    "--n",
    "--scheduler",
)

# A flag as written (canonical, lowercase) and its raw value.
_Given = tuple[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class PromptLimits:
    """What the parser accepts; built from ``PromptSettings``."""

    max_prompt_chars: int = 1000
    pixel_budget: int = 512 * 512
    max_aspect: float = 4.0
    max_steps: int = 150
    max_guidance: float = 30.0
    default_n: int = 4
    max_n: int = 8
    # Models with a native size of their own: name -> (pixel budget, size multiple).
    # ``--ar`` resolves against the model the prompt names (``default_model`` when it
    # names none); any other model uses ``pixel_budget`` in multiples of 64.
    native_sizes: Mapping[str, tuple[int, int]] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    default_model: str | None = None

    def size_rule(self, model: str | None) -> tuple[int, int]:
        """(pixel budget, size multiple) that ``--ar`` resolves against for ``model``."""
        name = model if model is not None else self.default_model
        if name is not None and name in self.native_sizes:
            return self.native_sizes[name]
        return self.pixel_budget, SIZE_MULTIPLE


@dataclasses.dataclass(slots=True)
class _Found:
    """A prompt split into its text tokens and its flags, values still raw."""

    text: list[str] = dataclasses.field(default_factory=list)
    values: dict[str, _Given] = dataclasses.field(default_factory=dict)
    speed: tuple[str, Speed] | None = None


def parse_prompt(
    text: str, limits: PromptLimits = PromptLimits(), rng: random.Random | None = None
) -> JobSpec:
    """Parse prompt text and its flags into a spec; raises :class:`PromptError` only.

    Without ``--seed`` the seed is drawn from ``rng`` (a ``SystemRandom`` by default) and
    recorded in the spec, so the same spec always reproduces the same images.
    """
    _check_raw(text, limits)
    found = _collect(_tokens(text), limits)
    prompt = _prompt_text(found.text, limits)
    model = _model(found.values.get("model"), limits)
    aspect, (width, height) = _aspect(found.values.get("aspect"), limits, model)
    seed = _optional_whole(found.values.get("seed"), 0, SEED_MAX, limits)
    n = _optional_whole(found.values.get("n"), 1, limits.max_n, limits)
    spec = JobSpec(
        prompt=prompt,
        seed=0,
        width=width,
        height=height,
        aspect=aspect,
        negative_prompt=_negative(found.values.get("negative_prompt"), limits),
        steps=_optional_whole(found.values.get("steps"), 1, limits.max_steps, limits),
        guidance=_guidance(found.values.get("guidance"), limits),
        speed=found.speed[1] if found.speed is not None else None,
        model=model,
        n=limits.default_n if n is None else n,
        scheduler=_scheduler(found.values.get("scheduler"), limits),
    )
    # Drawn last so that a refused prompt consumes nothing from the caller's rng.
    if seed is None:
        seed = (rng if rng is not None else random.SystemRandom()).randrange(SEED_MAX + 1)
    return dataclasses.replace(spec, seed=seed)


def with_defaults(text: str, *defaults: str, limits: PromptLimits = PromptLimits()) -> str:
    """``text`` completed by ``defaults``, each prompt text of its own (a user's suffix,
    their preferred flags, a guild's default speed): the words of each are appended, and
    each flag only where neither ``text`` nor an earlier default sets its field, so
    flags typed in ``text`` always win. Raises :class:`PromptError` for a malformed one.
    """
    _check_raw(text, limits)
    found = _collect(_tokens(text), limits)
    given = set(found.values) | ({"speed"} if found.speed is not None else set())
    parts = [text.strip()]
    for extra in defaults:
        more = _collect(_tokens(extra), limits)
        parts.extend(more.text)
        for name, (flag, value) in more.values.items():
            if name not in given:
                given.add(name)
                parts.append(f"{flag} {value}")
        if more.speed is not None and "speed" not in given:
            given.add("speed")
            parts.append(more.speed[0])
    return " ".join(part for part in parts if part)


def format_prompt(spec: JobSpec) -> str:
    """Write a spec as prompt text that :func:`parse_prompt` turns back into the same spec.

    The seed and ``--n`` are always written, so the text does not depend on chance or on
    the configured default; width and height follow from ``--ar`` and the pixel budget.
    """
    parts = [spec.prompt]
    if spec.aspect != (1, 1):
        parts.append(f"--ar {spec.aspect[0]}:{spec.aspect[1]}")
    parts.append(f"--seed {spec.seed}")
    if spec.negative_prompt:
        parts.append(f"--no {spec.negative_prompt}")
    if spec.steps is not None:
        parts.append(f"--steps {spec.steps}")
    if spec.guidance is not None:
        parts.append(f"--cfg {_decimal_text(spec.guidance)}")
    if spec.speed is not None:
        parts.append(f"--{spec.speed.value}")
    if spec.model is not None:
        parts.append(f"--model {spec.model}")
    parts.append(f"--n {spec.n}")
    if spec.scheduler is not None:
        parts.append(f"--scheduler {spec.scheduler}")
    return " ".join(parts)


def image_size(
    aspect: tuple[int, int], pixel_budget: int, multiple: int = SIZE_MULTIPLE
) -> tuple[int, int]:
    """The largest size of ratio ``aspect`` in multiples of ``multiple`` within
    ``pixel_budget`` pixels.

    Exact integer arithmetic (``isqrt(floor(x)) == floor(sqrt(x))``), so the size never
    depends on float rounding. A side is 0 when the budget is too small for the ratio.
    """
    across, down = aspect
    width = math.isqrt(pixel_budget * across // down) // multiple * multiple
    height = math.isqrt(pixel_budget * down // across) // multiple * multiple
    return width, height


def _check_raw(text: str, limits: PromptLimits) -> None:
    """Cheap guards on the whole message, before any tokenizing."""
    if len(text) > 4 * limits.max_prompt_chars + 1000:
        raise PromptError(
            None,
            f"message is {len(text)} characters long",
            f"write at most {limits.max_prompt_chars} characters of text, plus flags",
        )
    # Tabs and newlines are Cc too, but they only separate words; surrogates (Cs) cannot
    # be stored as UTF-8.
    if any(unicodedata.category(c) in ("Cc", "Cs") and not c.isspace() for c in text):
        raise PromptError(None, "contains control characters", "write printable text only")
    if not _OVERRIDES.isdisjoint(text):
        raise PromptError(
            None,
            "contains a bidi override (U+202D or U+202E)",
            "write the text in the order it is read, without direction overrides",
        )


def _tokens(text: str) -> list[str]:
    """The words of the message, each from its first visible character; words that
    show nothing are left out."""
    words = (
        _LEADING_INVISIBLE.sub("", _INVISIBLE_AFTER_COMMA.sub("", word))
        for word in _DROPPED.sub("", text).split()
    )
    return [word for word in words if word]


def _collect(tokens: list[str], limits: PromptLimits) -> _Found:
    """Separate text tokens from flags; each value flag takes its raw value."""
    found = _Found()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        flag = _flag_of(token)
        if flag is None:
            found.text.append(token)
            continue
        if flag[2:] in _SPEEDS:
            found.speed = _speed(found.speed, flag)
            continue
        name = _field_of(flag, found.values)
        end = _value_end(tokens, index, flag)
        if end == index:
            raise PromptError(flag, "missing value", _form(flag, limits))
        value = " ".join(tokens[index:end])
        # The negative prompt is text for the model; every other value is ASCII.
        found.values[name] = (flag, value if flag == "--no" else value.translate(_NARROW))
        index = end
    return found


def _value_end(tokens: list[str], start: int, flag: str) -> int:
    """Where a flag's value ends: --no runs up to the next flag, the others take one token."""
    stop = len(tokens) if flag == "--no" else min(start + 1, len(tokens))
    end = start
    while end < stop and not _flag_like(tokens[end]):
        end += 1
    return end


def _flag_like(token: str) -> bool:
    """Starts like a flag; a token of dashes alone ("--", "—") is punctuation, not a flag."""
    return _PREFIX.match(token) is not None and not set(token) <= _DASHES


def _flag_of(token: str) -> str | None:
    """The canonical ``--name`` of a flag token, or ``None`` for text."""
    prefix = _PREFIX.match(token)
    if prefix is None or set(token) <= _DASHES:
        return None
    name = token[prefix.end() :].translate(_NARROW)
    if _NAME.fullmatch(name) is None:
        raise PromptError(
            _clip(token), "malformed flag", "write a flag as --name, then its value after a space"
        )
    return "--" + name.lower()


def _field_of(flag: str, values: dict[str, _Given]) -> str:
    name = _FIELDS.get(flag)
    if name is None:
        raise PromptError(_clip(flag), "unknown flag", "known flags: " + ", ".join(KNOWN_FLAGS))
    if name in values:
        earlier = values[name][0]
        if earlier == flag:
            raise PromptError(flag, "given twice", f"give {flag} once")
        raise PromptError(
            flag, f"given twice (also as {earlier})", f"give only one of {earlier}, {flag}"
        )
    return name


def _speed(earlier: tuple[str, Speed] | None, flag: str) -> tuple[str, Speed]:
    if earlier is not None:
        if earlier[0] == flag:
            raise PromptError(flag, "given twice", f"give {flag} once")
        raise PromptError(
            flag, f"conflicts with {earlier[0]}", "use one of --fast, --relax, --turbo"
        )
    return flag, _SPEEDS[flag[2:]]


def _prompt_text(tokens: list[str], limits: PromptLimits) -> str:
    prompt = " ".join(tokens)
    if not prompt:
        raise PromptError(None, "no prompt text", "write what to draw before or after the flags")
    if len(prompt) > limits.max_prompt_chars:
        raise PromptError(
            None,
            f"text is {len(prompt)} characters long",
            f"write at most {limits.max_prompt_chars} characters",
        )
    return prompt


def _aspect(
    given: _Given | None, limits: PromptLimits, model: str | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The reduced ratio (1:1 when not given) and the size it resolves to for ``model``."""
    flag, raw = given if given is not None else ("--ar", "1:1")
    match = _RATIO.fullmatch(raw)
    if match is None:
        raise PromptError(flag, f"{_show(raw)} is not a ratio", _form(flag, limits))
    digits = [side.lstrip("0") for side in match.groups()]
    if any(len(side) > _MAX_DIGITS for side in digits):
        raise PromptError(flag, f"{_show(raw)} is out of range", _form(flag, limits))
    across, down = (int(side or "0") for side in digits)
    if across == 0 or down == 0:
        raise PromptError(flag, f"{_show(raw)} has a side of 0", _form(flag, limits))
    divisor = math.gcd(across, down)
    across, down = across // divisor, down // divisor
    widest = Fraction(limits.max_aspect)
    if across > widest * down or down > widest * across:
        shape = "wider" if across > down else "taller"
        raise PromptError(flag, f"{_show(raw)} is {shape} than allowed", _form(flag, limits))
    budget, multiple = limits.size_rule(model)
    width, height = image_size((across, down), budget, multiple)
    if min(width, height) < multiple:
        raise PromptError(
            flag,
            f"{_show(raw)} leaves a side under {multiple} pixels "
            f"within the budget of {budget} pixels",
            _form(flag, limits),
        )
    return (across, down), (width, height)


def _optional_whole(given: _Given | None, low: int, high: int, limits: PromptLimits) -> int | None:
    """A plain ASCII whole number in ``low..high``, or ``None`` when the flag is absent."""
    if given is None:
        return None
    flag, raw = given
    if _WHOLE.fullmatch(raw) is None:
        problem = "is out of range" if _NEGATIVE.fullmatch(raw) else "is not a whole number"
        raise PromptError(flag, f"{_show(raw)} {problem}", _form(flag, limits))
    digits = raw.lstrip("0") or "0"
    value = int(digits) if len(digits) <= _MAX_DIGITS else high + 1
    if not low <= value <= high:
        raise PromptError(flag, f"{_show(raw)} is out of range", _form(flag, limits))
    return value


def _guidance(given: _Given | None, limits: PromptLimits) -> float | None:
    """A plain decimal in ``0..max_guidance``, rounded to two places.

    Rounding gives every value an exact short decimal form, so formatting round-trips.
    """
    if given is None:
        return None
    flag, raw = given
    if _DECIMAL.fullmatch(raw) is None:
        problem = "is out of range" if _NEGATIVE.fullmatch(raw) else "is not a number"
        raise PromptError(flag, f"{_show(raw)} {problem}", _form(flag, limits))
    value = round(float(raw), _GUIDANCE_PLACES)
    if not 0 <= value <= limits.max_guidance:
        raise PromptError(flag, f"{_show(raw)} is out of range", _form(flag, limits))
    return value


def _negative(given: _Given | None, limits: PromptLimits) -> str:
    """The ``--no`` list, normalized to ``a, b, c``."""
    if given is None:
        return ""
    flag, raw = given
    parts = (_LEADING_INVISIBLE.sub("", part.strip()) for part in raw.split(","))
    value = ", ".join(part for part in parts if part)
    if not value:
        raise PromptError(flag, "nothing to leave out", _form(flag, limits))
    if len(value) > limits.max_prompt_chars:
        raise PromptError(flag, f"is {len(value)} characters long", _form(flag, limits))
    # Splitting on commas can expose a flag ("a,--x" gives "a, --x"), which would be
    # read as a flag when the spec is formatted again.
    for token in value.split():
        if _flag_like(token):
            raise PromptError(flag, f"{_show(token)} looks like a flag", _form(flag, limits))
    return value


def _model(given: _Given | None, limits: PromptLimits) -> str | None:
    """A plain model name, lowercased; whether it exists is the catalog's concern."""
    if given is None:
        return None
    flag, raw = given
    if _MODEL.fullmatch(raw) is None:
        raise PromptError(flag, f"{_show(raw)} is not a model name", _form(flag, limits))
    return raw.lower()


def _scheduler(given: _Given | None, limits: PromptLimits) -> str | None:
    """One of :data:`SCHEDULER_NAMES`, with any case and ``-`` for ``_``."""
    if given is None:
        return None
    flag, raw = given
    name = raw.lower().replace("-", "_")
    if name not in SCHEDULER_NAMES:
        raise PromptError(flag, f"{_show(raw)} is not a known scheduler", _form(flag, limits))
    return name


def _form(flag: str, limits: PromptLimits) -> str:
    """What ``flag`` accepts under ``limits``, for error messages."""
    widest = f"{limits.max_aspect:g}"
    forms = {
        "--ar": f"expected --ar W:H with whole numbers W, H >= 1, from 1:{widest} to {widest}:1",
        "--seed": f"expected --seed N with 0 <= N <= {SEED_MAX}",
        "--no": (
            "expected --no thing, other thing "
            f"(at most {limits.max_prompt_chars} characters, no flags)"
        ),
        "--steps": f"expected --steps N with 1 <= N <= {limits.max_steps}",
        "--cfg": f"expected --cfg X with 0 <= X <= {limits.max_guidance:g}",
        "--guidance": f"expected --guidance X with 0 <= X <= {limits.max_guidance:g}",
        "--model": (
            "expected --model NAME: a letter or digit, then up to 63 letters, digits, . _ or -"
        ),
        "--n": f"expected --n N with 1 <= N <= {limits.max_n}",
        "--scheduler": f"expected --scheduler NAME, one of {', '.join(SCHEDULER_NAMES)}",
    }
    return forms[flag]


def _decimal_text(value: float) -> str:
    """``7.5`` for 7.5, ``30`` for 30.0: a form the ``--cfg`` pattern accepts."""
    return f"{value:.{_GUIDANCE_PLACES}f}".rstrip("0").rstrip(".")


def _show(raw: str) -> str:
    return f"'{_clip(raw)}'"


def _clip(raw: str) -> str:
    """User text quoted in a message, cut short so a reply stays readable."""
    return raw if len(raw) <= _SHOWN_CHARS else raw[: _SHOWN_CHARS - 1] + "…"
