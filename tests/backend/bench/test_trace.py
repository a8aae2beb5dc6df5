"""Scheduler benchmark traces: JSON Lines loading and saving, validation, the synthetic mix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from backend.bench.trace import (
    FLOOD_USER,
    TraceError,
    TraceJob,
    load_trace,
    synthetic_trace,
    write_trace,
)
from backend.errors import BadInputError
from backend.models import Speed

TIERS = ("free", "basic", "pro", "admin")
GOOD = {
    "t": 1.5,
    "user": "u001",
    "tier": "free",
    "steps": 4,
    "width": 512,
    "height": 512,
    "n": 4,
    "lane": None,
}


def _service_s(job: TraceJob) -> float:
    """A device where work grows with steps, pixels and images (seconds running alone)."""
    return 0.01 * job.steps * job.n * (job.width * job.height) / 512**2


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    """A written trace loads back as the very same jobs, lanes and indexes included."""
    jobs = [
        TraceJob(0, 0.0, "a", "free", 4, 512, 512, 4, None),
        TraceJob(1, 0.1 + 0.2, "b", "pro", 50, 1024, 768, 1, Speed.RELAX),
        TraceJob(2, 7.25, "c", "admin", 8, 64, 64, 2, Speed.TURBO),
    ]
    path = tmp_path / "trace.jsonl"
    write_trace(path, jobs)
    assert load_trace(path, tiers=TIERS) == jobs


def test_synthetic_trace_round_trips(tmp_path: Path) -> None:
    """The default synthetic trace survives write_trace then load_trace unchanged."""
    jobs = synthetic_trace(seed=3, jobs=200, mean_service_s=_service_s)
    path = tmp_path / "synthetic.jsonl"
    write_trace(path, jobs)
    assert load_trace(path, tiers=TIERS) == jobs


def test_load_sorts_by_t_stably_and_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    """Jobs come back by t (ties in file order), indexed in that order; # and blank lines skip."""
    lines = ["# a comment", ""]
    for t, user in ((3.0, "late"), (1.0, "tie-first"), (1.0, "tie-second"), (0.0, "first")):
        lines.append(json.dumps({**GOOD, "t": t, "user": user}))
    path = _write_lines(tmp_path / "trace.jsonl", lines)
    jobs = load_trace(path, tiers=TIERS)
    assert [job.user for job in jobs] == ["first", "tie-first", "tie-second", "late"]
    assert [job.index for job in jobs] == [0, 1, 2, 3]


def _bad(field: str, value: object) -> str:
    return json.dumps({**GOOD, field: value})


def _without(field: str) -> str:
    return json.dumps({key: value for key, value in GOOD.items() if key != field})


BAD_LINES = [
    pytest.param("{not json", None, "invalid JSON", id="invalid-json"),
    pytest.param("[1, 2]", None, "JSON object", id="not-object"),
    pytest.param(_without("steps"), "steps", "missing", id="missing-steps"),
    pytest.param(_without("lane"), "lane", "missing", id="missing-lane"),
    pytest.param(_bad("t", "soon"), "t", "number", id="t-string"),
    pytest.param(_bad("t", True), "t", "boolean", id="t-bool"),
    pytest.param(_bad("t", -1), "t", ">= 0", id="t-negative"),
    pytest.param(_bad("t", float("nan")), "t", "finite", id="t-nan"),
    pytest.param(_bad("t", float("inf")), "t", "finite", id="t-inf"),
    pytest.param(_bad("user", 7), "user", "string", id="user-number"),
    pytest.param(_bad("user", ""), "user", "non-empty", id="user-empty"),
    pytest.param(_bad("tier", None), "tier", "string", id="tier-null"),
    pytest.param(_bad("steps", True), "steps", "integer", id="steps-bool"),
    pytest.param(_bad("steps", 4.0), "steps", "integer", id="steps-float"),
    pytest.param(_bad("steps", 0), "steps", ">= 1", id="steps-zero"),
    pytest.param(_bad("n", -2), "n", ">= 1", id="n-negative"),
    pytest.param(_bad("width", 0), "width", ">= 1", id="width-zero"),
    pytest.param(_bad("width", 500), "width", "multiple of 8", id="width-not-8"),
    pytest.param(_bad("height", 513), "height", "multiple of 8", id="height-not-8"),
    pytest.param(_bad("tier", "gold"), "tier", "known tiers: admin, basic, free, pro", id="tier"),
    pytest.param(_bad("lane", "slow"), "lane", "allowed: fast, relax, turbo", id="lane-unknown"),
    pytest.param(_bad("lane", 1), "lane", "allowed: fast, relax, turbo", id="lane-number"),
]


@pytest.mark.parametrize(("line", "field", "problem"), BAD_LINES)
def test_bad_line_names_line_and_field(
    tmp_path: Path, line: str, field: str | None, problem: str
) -> None:
    """Each kind of bad line raises a TraceError (a BadInputError) naming its line and field."""
    # Line 4: after a comment, a blank line and a good job.
    path = _write_lines(tmp_path / "trace.jsonl", ["# header", "", json.dumps(GOOD), line])
    with pytest.raises(TraceError) as caught:
        load_trace(path, tiers=TIERS)
    error = caught.value
    assert isinstance(error, BadInputError) and error.exit_status == 2
    assert error.line == 4 and error.field == field
    assert "line 4" in error.message and problem in error.message
    if field is not None:
        assert repr(field) in error.message


def test_synthetic_trace_is_deterministic_per_seed() -> None:
    """The same seed gives the same trace; another seed a different one."""
    first = synthetic_trace(seed=11, jobs=500, mean_service_s=_service_s)
    assert first == synthetic_trace(seed=11, jobs=500, mean_service_s=_service_s)
    assert first != synthetic_trace(seed=12, jobs=500, mean_service_s=_service_s)


@pytest.fixture(scope="module")
def default_trace() -> list[TraceJob]:
    """The benchmark's default synthetic trace (3000 jobs, load 0.85)."""
    return synthetic_trace(seed=1, mean_service_s=_service_s)


def test_synthetic_trace_is_sorted_and_indexed(default_trace: list[TraceJob]) -> None:
    """Jobs come by non-decreasing t from t > 0, indexed 0..n-1 in that order."""
    assert len(default_trace) == 3000
    times = [job.t_s for job in default_trace]
    assert times == sorted(times) and times[0] > 0
    assert [job.index for job in default_trace] == list(range(3000))


def test_synthetic_mix_is_80_20_with_10_percent_relax_among_long(
    default_trace: list[TraceJob],
) -> None:
    """About 80% short (4 steps, 512 px), 20% long (50 steps, 1024 px), n=4; 10% of long relax."""
    shapes = Counter((job.steps, job.width, job.height, job.n) for job in default_trace)
    assert set(shapes) == {(4, 512, 512, 4), (50, 1024, 1024, 4)}
    long_jobs = [job for job in default_trace if job.steps == 50]
    assert abs(len(long_jobs) / len(default_trace) - 0.2) < 0.03
    relax = [job for job in long_jobs if job.speed is Speed.RELAX]
    assert abs(len(relax) / len(long_jobs) - 0.1) < 0.04
    assert all(job.speed is None for job in default_trace if job.steps == 4)
    assert all(job.speed in (None, Speed.RELAX) for job in long_jobs)


def test_synthetic_flood_user_submits_ten_times_the_mean_user(
    default_trace: list[TraceJob],
) -> None:
    """The free-tier flood user's job count is about 10x the mean of the 200 regular users."""
    counts = Counter(job.user for job in default_trace)
    flood = counts.pop(FLOOD_USER)
    mean_regular = sum(counts.values()) / 200
    assert 7.5 < flood / mean_regular < 12.5
    assert {job.tier for job in default_trace if job.user == FLOOD_USER} == {"free"}
    # Zipf: the most active regular user far outdoes the median one.
    assert counts["u001"] > 5 * sorted(counts.values())[len(counts) // 2]


def test_synthetic_tiers_are_60_30_10_by_user_without_admins(
    default_trace: list[TraceJob],
) -> None:
    """Regular users are named u001..u200, each with one tier, about 60:30:10 free:basic:pro."""
    tier_of = {job.user: job.tier for job in default_trace if job.user != FLOOD_USER}
    assert len({(job.user, job.tier) for job in default_trace}) == len(tier_of) + 1
    assert all(name.startswith("u") and 1 <= int(name[1:]) <= 200 for name in tier_of)
    share = Counter(tier_of.values())
    assert set(share) == {"free", "basic", "pro"}
    users = len(tier_of)
    assert abs(share["free"] / users - 0.6) < 0.06
    assert abs(share["basic"] / users - 0.3) < 0.06
    assert abs(share["pro"] / users - 0.1) < 0.04


@pytest.mark.parametrize("load", [0.5, 0.85, 1.2])
def test_synthetic_offered_load_matches(load: float) -> None:
    """Work offered over the span of arrivals is within 10% of load x capacity."""
    jobs = synthetic_trace(seed=5, load=load, mean_service_s=_service_s)
    offered = sum(_service_s(job) for job in jobs) / jobs[-1].t_s
    assert abs(offered / load - 1) < 0.1


@pytest.mark.parametrize(("jobs", "load"), [(0, 0.85), (10, 0.0), (10, -1.0), (10, float("nan"))])
def test_synthetic_refuses_bad_parameters(jobs: int, load: float) -> None:
    """A job count below 1 or a load that is not a positive number is a BadInputError."""
    with pytest.raises(BadInputError):
        synthetic_trace(seed=1, jobs=jobs, load=load, mean_service_s=_service_s)
