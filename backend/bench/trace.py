"""Job traces of ``imagine bench scheduler``: load, save and synthesise arrival streams.

A trace is JSON Lines, one job per line::

    {"t": 12.5, "user": "u001", "tier": "free", "steps": 4, "width": 512, "height": 512,
     "n": 4, "lane": null}

``t`` is seconds from the start of the trace; ``lane`` is the speed the user asked for
(``"fast"``, ``"relax"``, ``"turbo"``) or ``null`` to let the classifier decide. Blank
lines and lines starting with ``#`` are skipped; other keys are ignored.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backend.errors import BadInputError
from backend.models import Speed

_FIELDS = ("t", "user", "tier", "steps", "width", "height", "n", "lane")
_POSITIVE_INTS = ("steps", "width", "height", "n")
# The engine works on latents an eighth of the image's size.
_PIXEL_MULTIPLE = 8


class TraceError(BadInputError):
    """A trace file line is invalid.

    ``line`` is 1-based; ``field`` names the offending key, or is ``None`` when the
    line as a whole is wrong (not JSON, not an object).
    """

    def __init__(self, path: Path, line: int, field: str | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{path}: line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One submitted job of a trace.

    ``index`` is the job's 0-based position in arrival order (the order the trace is
    returned in), so it serves as the job's id in a simulation.
    """

    index: int
    t_s: float
    user: str
    tier: str
    steps: int
    width: int
    height: int
    n: int
    speed: Speed | None = None


def load_trace(path: Path, *, tiers: Collection[str]) -> list[TraceJob]:
    """Read and validate a JSON Lines trace; jobs come back sorted by ``t`` (stable)."""
    known_tiers = frozenset(tiers)
    jobs: list[TraceJob] = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            jobs.append(_parse_line(path, number, stripped, known_tiers))
    return _in_arrival_order(jobs)


def read_trace(path: Path, *, tiers: Collection[str]) -> list[TraceJob]:
    """:func:`load_trace`, refusing a trace without jobs."""
    trace = load_trace(path, tiers=tiers)
    if not trace:
        raise BadInputError(f"trace {path} holds no jobs")
    return trace


@dataclass(frozen=True, slots=True)
class TraceSource:
    """Where a benchmark's trace comes from: the JSON Lines file at ``path`` when set,
    else :func:`synthetic_trace` with ``seed``, ``jobs`` and ``load``."""

    path: Path | None
    seed: int
    jobs: int
    load: float


def trace_from(
    source: TraceSource,
    *,
    tiers: Collection[str],
    mean_service_s: Callable[[TraceJob], float],
) -> list[TraceJob]:
    """The trace ``source`` names: read (see :func:`read_trace`) or synthesised."""
    if source.path is not None:
        return read_trace(source.path, tiers=tiers)
    return synthetic_trace(
        seed=source.seed, jobs=source.jobs, load=source.load, mean_service_s=mean_service_s
    )


def write_trace(path: Path, jobs: Iterable[TraceJob]) -> None:
    """Write jobs as a trace that ``load_trace`` reads back unchanged."""
    with path.open("w", encoding="utf-8") as out:
        for job in jobs:
            record = {
                "t": job.t_s,
                "user": job.user,
                "tier": job.tier,
                "steps": job.steps,
                "width": job.width,
                "height": job.height,
                "n": job.n,
                "lane": None if job.speed is None else job.speed.value,
            }
            out.write(json.dumps(record) + "\n")


def _in_arrival_order(jobs: list[TraceJob]) -> list[TraceJob]:
    ordered = sorted(jobs, key=lambda job: job.t_s)
    return [replace(job, index=index) for index, job in enumerate(ordered)]


def _parse_line(path: Path, number: int, text: str, tiers: frozenset[str]) -> TraceJob:
    def fail(field: str | None, problem: str) -> TraceError:
        return TraceError(path, number, field, problem)

    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(None, f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(record, dict):
        raise fail(None, f"expected a JSON object, got {_json_type(record)}")
    for name in _FIELDS:
        if name not in record:
            raise fail(name, "missing field")

    t = record["t"]
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise fail("t", f"expected a number of seconds, got {_json_type(t)}")
    if not math.isfinite(t) or t < 0:
        raise fail("t", f"expected a finite number of seconds >= 0, got {t!r}")
    user = _text(record, "user", fail)
    if not user:
        raise fail("user", "expected a non-empty string")
    tier = _text(record, "tier", fail)
    if tier not in tiers:
        raise fail("tier", f"unknown tier {tier!r}; known tiers: {', '.join(sorted(tiers))}")
    sizes = {name: _positive_int(record, name, fail) for name in _POSITIVE_INTS}
    for name in ("width", "height"):
        if sizes[name] % _PIXEL_MULTIPLE:
            raise fail(name, f"expected a multiple of {_PIXEL_MULTIPLE}, got {sizes[name]}")
    return TraceJob(
        index=number - 1,
        t_s=float(t),
        user=user,
        tier=tier,
        steps=sizes["steps"],
        width=sizes["width"],
        height=sizes["height"],
        n=sizes["n"],
        speed=_speed(record["lane"], fail),
    )


def _text(record: Mapping[str, Any], name: str, fail: Callable[[str, str], TraceError]) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise fail(name, f"expected a string, got {_json_type(value)}")
    return value


def _positive_int(
    record: Mapping[str, Any], name: str, fail: Callable[[str, str], TraceError]
) -> int:
    value = record[name]
    # bool is an int to Python but never a count in a trace.
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(name, f"expected an integer, got {_json_type(value)}")
    if value < 1:
        raise fail(name, f"expected an integer >= 1, got {value}")
    return value


def _speed(value: object, fail: Callable[[str, str], TraceError]) -> Speed | None:
    if value is None:
        return None
    allowed = ", ".join(speed.value for speed in Speed) + " or null"
    if not isinstance(value, str) or value not in {speed.value for speed in Speed}:
        raise fail("lane", f"unknown lane {value!r}; allowed: {allowed}")
    return Speed(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    return "an object"


# The default synthetic trace of the benchmark.
SHORT_STEPS, SHORT_SIZE_PX = 4, 512
LONG_STEPS, LONG_SIZE_PX = 50, 1024
IMAGES_PER_JOB = 4
LONG_FRACTION = 0.2
LONG_RELAX_FRACTION = 0.1
REGULAR_USERS = 200
ZIPF_EXPONENT = 1.1
# Tiers of regular users by count, free:basic:pro = 60:30:10; no admins.
TIER_SHARES: tuple[tuple[str, float], ...] = (("free", 0.6), ("basic", 0.3), ("pro", 0.1))
FLOOD_USER = "flood"
FLOOD_TIER = "free"
FLOOD_RATE_VS_MEAN_USER = 10.0


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    tier: str
    weight: float


def synthetic_trace(
    *,
    seed: int,
    jobs: int = 3000,
    load: float = 0.85,
    mean_service_s: Callable[[TraceJob], float],
) -> list[TraceJob]:
    """The benchmark's default trace: a short/long job mix from Zipf-active users plus
    one free-tier flooder, with Poisson arrivals offering ``load`` x the device's capacity.

    ``mean_service_s(job)`` is a job's service time running alone on the simulated
    device; capacity is one over its mean across the generated mix. Deterministic for
    a ``seed``.
    """
    if jobs < 1:
        raise BadInputError(f"synthetic trace: jobs must be >= 1, got {jobs}")
    if not (math.isfinite(load) and load > 0):
        raise BadInputError(f"synthetic trace: load must be a finite number > 0, got {load}")
    rng = random.Random(seed)
    users = _synthetic_users(rng)
    cum_weights = list(itertools.accumulate(user.weight for user in users))
    # Kinds and users first, so the arrival rate can follow from the mix's mean service.
    kinds = [_synthetic_job(rng, users, cum_weights, index) for index in range(jobs)]
    mean_s = sum(mean_service_s(job) for job in kinds) / jobs
    if not (math.isfinite(mean_s) and mean_s > 0):
        raise BadInputError(f"synthetic trace: mean service time must be > 0, got {mean_s}")
    rate_per_s = load / mean_s
    t_s = 0.0
    arrivals: list[TraceJob] = []
    for job in kinds:
        t_s += rng.expovariate(rate_per_s)
        arrivals.append(replace(job, t_s=t_s))
    return arrivals


def _synthetic_users(rng: random.Random) -> list[_User]:
    # Exact tier counts, shuffled over activity ranks so tier and activity are independent.
    tiers = [name for name, share in TIER_SHARES for _ in range(round(share * REGULAR_USERS))]
    tiers += [TIER_SHARES[0][0]] * (REGULAR_USERS - len(tiers))
    rng.shuffle(tiers)
    users = [
        _User(f"u{rank:03d}", tier, 1.0 / rank**ZIPF_EXPONENT)
        for rank, tier in zip(range(1, REGULAR_USERS + 1), tiers, strict=True)
    ]
    mean_weight = sum(user.weight for user in users) / len(users)
    users.append(_User(FLOOD_USER, FLOOD_TIER, FLOOD_RATE_VS_MEAN_USER * mean_weight))
    return users


def _synthetic_job(
    rng: random.Random, users: list[_User], cum_weights: list[float], index: int
) -> TraceJob:
    user = rng.choices(users, cum_weights=cum_weights)[0]
    long = rng.random() < LONG_FRACTION
    relax = long and rng.random() < LONG_RELAX_FRACTION
    steps, size_px = (LONG_STEPS, LONG_SIZE_PX) if long else (SHORT_STEPS, SHORT_SIZE_PX)
    return TraceJob(
        index=index,
        t_s=0.0,
        user=user.name,
        tier=user.tier,
        steps=steps,
        width=size_px,
        height=size_px,
        n=IMAGES_PER_JOB,
        speed=Speed.RELAX if relax else None,
    )
