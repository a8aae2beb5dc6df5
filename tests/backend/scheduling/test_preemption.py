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


def running(job_id: str, lane: Lane, rows: int = 8, shape: str = "1024", **kw: float) -> Running:
    return Running(
        job_id,
        rank(lane, False),
        rows,
        shape,
        int(kw.get("steps", 10)),
        int(kw.get("preemptions", 0)),
        int(kw.get("seq", 1)),
        int(kw.get("left", 40)),
        kw.get("left_s", 0.0),
    )


def test_realtime_job_of_another_shape_evicts_the_whole_batch() -> None:
    """A realtime 512px job waiting behind batch-lane 1024px work evicts all of it."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    batch = [running("a", Lane.BATCH), running("b", Lane.BATCH, seq=2)]
    assert sorted(victims(wanted, batch, 16, RULES).evict) == ["a", "b"]


def test_no_eviction_of_equal_priority_or_when_it_fits() -> None:
    """Work of the same lane is not evicted, and nothing is when the job fits."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    assert victims(wanted, [running("a", Lane.REALTIME, shape="1024")], 16, RULES).evict == []
    assert victims(wanted, [running("a", Lane.BATCH, shape="512")], 16, RULES).evict == []


def test_same_shape_evicts_least_urgent_latest_first_until_it_fits() -> None:
    """Rows are freed from the least urgent, most recently started jobs, no more than needed."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    batch = [
        running("bg", Lane.BACKGROUND, rows=4, shape="512", seq=1),
        running("b1", Lane.BATCH, rows=4, shape="512", seq=2),
        running("b2", Lane.BATCH, rows=4, shape="512", seq=3),
        running("b3", Lane.BATCH, rows=4, shape="512", seq=4),
    ]
    assert victims(wanted, batch, 16, RULES).evict == ["bg", "b3"]


def test_anti_thrashing_protects_recent_and_often_preempted_jobs() -> None:
    """A job resumed fewer than min_steps ago, or preempted max_per_job times, stays."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    rules = Rules(enabled=True, min_steps=4, max_per_job=2)
    assert victims(wanted, [running("a", Lane.BATCH, steps=3)], 16, rules).evict == []
    assert victims(wanted, [running("a", Lane.BATCH, preemptions=2)], 16, rules).evict == []
    assert victims(wanted, [running("a", Lane.BATCH, steps=4, preemptions=1)], 16, rules).evict == [
        "a"
    ]
    assert victims(wanted, [running("a", Lane.BATCH)], 16, OFF).evict == []


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
        enabled=True, min_steps=1, max_per_job=10, size_ratio=4.0, pause_ratio=1.0
    )
    scheduler = load_settings(
        scheduler={
            "preemption": False,
            "preempt_min_steps": 7,
            "preempt_max_per_job": 1,
            "preempt_size_ratio": 9,
            "preempt_pause_ratio": 2,
        }
    ).scheduler
    assert Rules.from_settings(scheduler) == Rules(
        enabled=False, min_steps=7, max_per_job=1, size_ratio=9.0, pause_ratio=2.0
    )


SIZED = Rules(enabled=True, min_steps=2, max_per_job=3, size_ratio=4.0)


def test_within_a_rank_a_job_makes_way_only_for_a_much_smaller_one() -> None:
    """Shortest remaining work first among equals, with a margin: a 40 s job makes way
    for a 2 s one of its lane, not for a 20 s one, and not for one of unknown cost."""
    long = running("long", Lane.REALTIME, shape="1024", left_s=40.0)
    short = Candidate("short", rank(Lane.REALTIME, False), 8, "512", 2.0)
    medium = Candidate("medium", rank(Lane.REALTIME, False), 8, "512", 20.0)
    unknown = Candidate("unknown", rank(Lane.REALTIME, False), 8, "512")
    assert victims(short, [long], 16, SIZED).evict == ["long"]
    assert not victims(medium, [long], 16, SIZED)
    assert not victims(unknown, [long], 16, SIZED)
    assert not victims(short, [long], 16, RULES)  # size_ratio inf: lanes alone decide
    # A job of a less urgent rank never takes the device from a more urgent one.
    batch_short = Candidate("b", rank(Lane.BATCH, False), 8, "512", 0.1)
    assert not victims(batch_short, [long], 16, SIZED)


def test_jobs_are_paused_while_the_pause_room_lasts_then_evicted() -> None:
    """Up to pause_rows rows make way by pausing in place (largest remaining work
    first); the rest are evicted, and only those count against max_per_job."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    batch = [
        running("a", Lane.BATCH, left_s=10.0),
        running("b", Lane.BATCH, seq=2, left_s=30.0),
    ]
    plan = victims(wanted, batch, 16, SIZED, pause_rows=8)
    assert plan.pause == ["b"] and plan.evict == ["a"]
    plan = victims(wanted, batch, 16, SIZED, pause_rows=16)
    assert sorted(plan.pause) == ["a", "b"] and plan.evict == []
    # Evicted as often as allowed: it may still pause, not be evicted again.
    worn = [running("a", Lane.BATCH, preemptions=3)]
    assert victims(wanted, worn, 16, SIZED, pause_rows=8).pause == ["a"]
    assert not victims(wanted, worn, 16, SIZED, pause_rows=0)


def test_steps_until_start_counts_pausing_past_the_eviction_cap() -> None:
    """A job evicted max_per_job times still makes way within min_steps when it can be
    paused instead."""
    rt = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    worn = running("a", Lane.BATCH, preemptions=3, steps=0, left=25)
    assert steps_until_start(rt, [worn], 16, SIZED) == 25
    assert steps_until_start(rt, [worn], 16, SIZED, pause_rows=8) == 2


PAUSING = Rules(enabled=True, min_steps=2, max_per_job=3, size_ratio=4.0, pause_ratio=1.0)


def test_a_job_pauses_for_any_smaller_one_but_is_evicted_only_for_a_much_smaller_one() -> None:
    """Pausing costs nothing: a 40 s job pauses in place for a 20 s one of its rank
    while there is pause room; without room it would have to be evicted, which takes a
    job at most a quarter of its remaining work. Equal work never swaps."""
    long = running("long", Lane.REALTIME, shape="1024", left_s=40.0)
    medium = Candidate("medium", rank(Lane.REALTIME, False), 8, "512", 20.0)
    short = Candidate("short", rank(Lane.REALTIME, False), 8, "512", 2.0)
    equal = Candidate("equal", rank(Lane.REALTIME, False), 8, "512", 40.0)
    assert victims(medium, [long], 16, PAUSING, pause_rows=8).pause == ["long"]
    assert not victims(medium, [long], 16, PAUSING, pause_rows=0)
    assert victims(short, [long], 16, PAUSING, pause_rows=0).evict == ["long"]
    assert not victims(equal, [long], 16, PAUSING, pause_rows=8)


def test_a_full_batch_of_one_shape_pauses_only_the_jobs_with_more_work_left() -> None:
    """Same shape, no free rows: the job with the most work left that exceeds the
    waiting job's pauses; a job with less left than the waiting one keeps running."""
    near_done = running("near", Lane.REALTIME, shape="512", left_s=1.0)
    long = running("long", Lane.REALTIME, shape="512", seq=2, left_s=30.0)
    wanted = Candidate("new", rank(Lane.REALTIME, False), 8, "512", 5.0)
    plan = victims(wanted, [near_done, long], 16, PAUSING, pause_rows=8)
    assert plan.pause == ["long"] and plan.evict == []
    # Only the near-done job runs: it does not make way, so nothing moves.
    assert not victims(
        wanted,
        [near_done, running("x", Lane.REALTIME, shape="512", left_s=2.0)],
        16,
        PAUSING,
        pause_rows=16,
    )


def test_a_job_of_another_shape_waits_unless_every_running_job_may_make_way() -> None:
    """Another shape needs the whole device: every running job moves (paused while the
    room lasts, largest remaining work first, else evicted) or none does."""
    big = running("big", Lane.REALTIME, left_s=30.0)
    small = running("small", Lane.REALTIME, seq=2, left_s=3.0)
    wanted = Candidate("new", rank(Lane.REALTIME, False), 8, "512", 2.0)
    plan = victims(wanted, [small, big], 16, PAUSING, pause_rows=16)
    assert plan.pause == ["big", "small"] and plan.evict == []
    # Room for one: "small" would have to be evicted, and 2 s is not a quarter of 3 s.
    assert not victims(wanted, [small, big], 16, PAUSING, pause_rows=8)
    # A job with less work left than the waiting one holds the device.
    assert not victims(
        wanted, [big, running("tiny", Lane.REALTIME, left_s=1.0)], 16, PAUSING, pause_rows=16
    )


def test_a_job_that_would_not_join_waits_for_the_whole_batch() -> None:
    """With room in the batch a job starts at the next boundary; when the batch would
    not gain by growing (``joins`` False) it waits, as for another shape, until every
    running job is gone."""
    wanted = Candidate("b", rank(Lane.BATCH, False), 8, "1024", 5.0)
    batch = [running("x", Lane.BATCH, rows=8, left=12), running("y", Lane.BATCH, rows=4, left=30)]
    assert steps_until_start(wanted, batch, 32, OFF) == 1
    assert steps_until_start(wanted, batch, 32, OFF, joins=False) == 30


def test_against_aged_work_a_started_job_counts_as_aged() -> None:
    """An aged job takes the device from a running one only by being smaller (it would
    otherwise pause it, see it resume as the smaller of the two, and pause it again at
    every boundary); against waiting work it still outranks every lane."""
    busy = running("busy", Lane.REALTIME, shape="512", left_s=2.0)
    aged_big = Candidate("big", rank(Lane.BATCH, True), 8, "1024", 10.0)
    aged_small = Candidate("small", rank(Lane.BATCH, True), 8, "1024", 1.0)
    assert not victims(aged_big, [busy], 16, PAUSING, pause_rows=8)
    assert victims(aged_small, [busy], 16, PAUSING, pause_rows=8).pause == ["busy"]
    # An unaged realtime job still takes the device from a batch job of any size.
    batch = running("batch", Lane.BATCH, shape="512", left_s=1.0)
    realtime = Candidate("rt", rank(Lane.REALTIME, False), 8, "1024", 10.0)
    assert victims(realtime, [batch], 16, PAUSING, pause_rows=8).pause == ["batch"]
