"""Preemption victims and start delays under the anti-thrashing rules."""

from __future__ import annotations

from backend.models import Lane
from backend.scheduling.preemption import (
    Candidate,
    Rules,
    Running,
    rank,
    steps_until_start,
    victims,
)
from config.settings import load_settings

# Fixed here, apart from the settings, so these tests pin the rules alone.
RULES = Rules(enabled=True, min_steps=4, max_per_job=3)
OFF = Rules(enabled=False, min_steps=4, max_per_job=3)


def running(job_id: str, lane: Lane, rows: int = 8, shape: str = "1024", **kw: int) -> Running:
    return Running(
        job_id,
        rank(lane, False),
        rows,
        shape,
        kw.get("steps", 10),
        kw.get("preemptions", 0),
        kw.get("seq", 1),
        kw.get("left", 40),
    )


def test_realtime_job_of_another_shape_evicts_the_whole_batch() -> None:
    """A realtime 512px job waiting behind batch-lane 1024px work evicts all of it."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    batch = [running("a", Lane.BATCH), running("b", Lane.BATCH, seq=2)]
    assert sorted(victims(wanted, batch, 16, RULES)) == ["a", "b"]


def test_no_eviction_of_equal_priority_or_when_it_fits() -> None:
    """Work of the same lane is not evicted, and nothing is when the job fits."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    assert victims(wanted, [running("a", Lane.REALTIME, shape="1024")], 16, RULES) == []
    assert victims(wanted, [running("a", Lane.BATCH, shape="512")], 16, RULES) == []


def test_same_shape_evicts_least_urgent_latest_first_until_it_fits() -> None:
    """Rows are freed from the least urgent, most recently started jobs, no more than needed."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    batch = [
        running("bg", Lane.BACKGROUND, rows=4, shape="512", seq=1),
        running("b1", Lane.BATCH, rows=4, shape="512", seq=2),
        running("b2", Lane.BATCH, rows=4, shape="512", seq=3),
        running("b3", Lane.BATCH, rows=4, shape="512", seq=4),
    ]
    assert victims(wanted, batch, 16, RULES) == ["bg", "b3"]


def test_anti_thrashing_protects_recent_and_often_preempted_jobs() -> None:
    """A job resumed fewer than min_steps ago, or preempted max_per_job times, stays."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    rules = Rules(enabled=True, min_steps=4, max_per_job=2)
    assert victims(wanted, [running("a", Lane.BATCH, steps=3)], 16, rules) == []
    assert victims(wanted, [running("a", Lane.BATCH, preemptions=2)], 16, rules) == []
    assert victims(wanted, [running("a", Lane.BATCH, steps=4, preemptions=1)], 16, rules) == ["a"]
    assert victims(wanted, [running("a", Lane.BATCH)], 16, OFF) == []


def test_aged_job_outranks_every_lane() -> None:
    """An aged background job ranks above fresh realtime work."""
    assert rank(Lane.BACKGROUND, True) < rank(Lane.REALTIME, False) < rank(Lane.BATCH, False)


def test_steps_until_start_follows_the_preemption_rules() -> None:
    """A waiting job starts after one step when it joins or may preempt, after the
    min_steps protection runs out, or once a job it may not preempt finishes."""
    rules = Rules(enabled=True, min_steps=4, max_per_job=2)
    rt = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    assert steps_until_start(rt, [], 16, rules) == 0
    assert steps_until_start(rt, [running("a", Lane.BATCH, shape="512")], 16, rules) == 1
    assert steps_until_start(rt, [running("a", Lane.BATCH, steps=10)], 16, rules) == 1
    assert steps_until_start(rt, [running("a", Lane.BATCH, steps=1)], 16, rules) == 3
    capped = running("a", Lane.BATCH, preemptions=2, left=25)
    assert steps_until_start(rt, [capped, running("b", Lane.BATCH, steps=1)], 16, rules) == 25
    same = running("r", Lane.REALTIME, rows=12, shape="512", left=3)
    assert steps_until_start(rt, [same], 16, rules) == 3
    assert steps_until_start(rt, [running("a", Lane.BATCH)], 16, OFF) == 40


def test_rules_come_from_the_scheduler_settings() -> None:
    """The preemption switch and limits are the settings' (defaults and overrides)."""
    assert Rules.from_settings(load_settings().scheduler) == Rules(
        enabled=True, min_steps=2, max_per_job=10
    )
    scheduler = load_settings(
        scheduler={"preemption": False, "preempt_min_steps": 7, "preempt_max_per_job": 1}
    ).scheduler
    assert Rules.from_settings(scheduler) == Rules(enabled=False, min_steps=7, max_per_job=1)
