"""Fair queuing, aging, lanes and preemption: the pure policy, driven by a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from backend.models import Lane, Speed
from backend.scheduling.fairness import AgingPolicy, ClaimFilter, FairQueue, Ticket
from backend.scheduling.lanes import CostModel, StepModel, classify, lane_by_cost, rows_for
from backend.scheduling.preemption import (
    Candidate,
    Rules,
    Running,
    rank,
    steps_until_start,
    victims,
)
from config.settings import load_settings

AGING = AgingPolicy.from_seconds({Lane.REALTIME: 30, Lane.BATCH: 300, Lane.BACKGROUND: 3600}, 0.5)


def ticket(job_id: str, user: str, weight: float = 1.0, cost: float = 1.0, **kw: object) -> Ticket:
    lane = kw.pop("lane", Lane.REALTIME)
    assert isinstance(lane, Lane)
    return Ticket(job_id, lane, user, str(kw.pop("tier", "free")), cost, weight, 0)


def serve_backlogged(weights: dict[str, float], cost: float, served: int) -> Counter[str]:
    """Keep every user backlogged (one new job per job served) and count who is served."""
    queue = FairQueue(AGING)
    counter = iter(range(10**9))
    for user in weights:
        for _ in range(3):
            queue.push(ticket(f"{user}-{next(counter)}", user, weights[user], cost), 0)
    got: Counter[str] = Counter()
    for _ in range(served):
        taken = queue.pop(0)
        assert taken is not None
        queue.release(taken)
        got[taken.user] += 1
        queue.push(
            ticket(f"{taken.user}-{next(counter)}", taken.user, weights[taken.user], cost), 0
        )
    return got


def test_backlogged_users_are_served_in_proportion_to_weight() -> None:
    """Tiers weighted 4:2:1 get 4:2:1 of the service while all stay backlogged."""
    got = serve_backlogged({"pro": 4.0, "basic": 2.0, "free": 1.0}, 1.0, 700)
    assert got["pro"] == pytest.approx(400, abs=2)
    assert got["basic"] == pytest.approx(200, abs=2)
    assert got["free"] == pytest.approx(100, abs=2)


def test_a_flooding_user_gets_only_their_share() -> None:
    """A user with 1000 queued jobs and ten users with one each: the ten go first."""
    queue = FairQueue(AGING)
    for i in range(1000):
        queue.push(ticket(f"flood{i}", "flood"), 0)
    for i in range(10):
        queue.push(ticket(f"u{i}", f"user{i}"), 0)
    first = [queue.pop(0) for _ in range(11)]
    assert sum(1 for t in first if t is not None and t.user == "flood") == 1


def test_aged_job_of_the_lowest_tier_is_served_within_its_bound() -> None:
    """A free user's batch job behind a stream of pro realtime work starts by the time
    half its lane's bound has passed."""
    queue = FairQueue(AGING)
    queue.push(ticket("free-batch", "free", 1.0, 10.0, lane=Lane.BATCH), 0)
    now_ms = 0
    started = None
    while started is None:
        queue.push(ticket(f"rt{now_ms}", "pro", 4.0, 1.0), now_ms)
        taken = queue.pop(now_ms)
        assert taken is not None
        queue.release(taken)
        if taken.job_id == "free-batch":
            started = now_ms
        now_ms += 1000
    assert started <= AGING.aged_after_ms(Lane.BATCH) + 1000
    assert started < AGING.max_wait_ms[Lane.BATCH]


def test_claim_filter_and_running_cap_skip_without_losing() -> None:
    """Skipped tickets stay queued and come out once allowed."""
    queue = FairQueue(AGING)
    queue.push(Ticket("a", Lane.REALTIME, "u1", "free", 1.0, 1.0, 1), 0)
    queue.push(Ticket("b", Lane.REALTIME, "u1", "free", 1.0, 1.0, 1), 0)
    queue.push(Ticket("c", Lane.BATCH, "u2", "pro", 1.0, 4.0, 0), 0)
    assert queue.pop(0, ClaimFilter(exclude_tiers=frozenset({"free"}))).job_id == "c"  # type: ignore[union-attr]
    a = queue.pop(0)
    assert a is not None and a.job_id == "a"
    assert queue.pop(0) is None  # u1 is at its cap of one
    queue.release(a)
    b = queue.pop(0)
    assert b is not None and b.job_id == "b"


def test_random_operations_keep_depth_and_positions_consistent() -> None:
    """Pushes, pops, removals and restores in random order never lose or duplicate."""
    rng = random.Random(3)
    queue = FairQueue(AGING)
    queued: set[str] = set()
    taken: dict[str, Ticket] = {}
    for step in range(2000):
        action = rng.random()
        if action < 0.5:
            job_id = f"j{step}"
            queue.push(ticket(job_id, f"u{rng.randrange(5)}", cost=rng.uniform(0.1, 5)), step)
            queued.add(job_id)
        elif action < 0.75 and queued:
            got = queue.pop(step)
            assert got is not None and got.job_id in queued
            queued.discard(got.job_id)
            taken[got.job_id] = got
        elif action < 0.85 and taken:
            back = taken.pop(rng.choice(sorted(taken)))
            queue.restore(back)
            queued.add(back.job_id)
        elif queued:
            victim = rng.choice(sorted(queued))
            assert queue.remove(victim) is not None
            queued.discard(victim)
        assert queue.depth() == len(queued)
    positions = sorted(p for j in queued if (p := queue.position(j)) is not None)
    assert positions == list(range(len(queued)))


# -- lanes -------------------------------------------------------------------------------


def test_lane_by_cost_uses_the_thresholds() -> None:
    """Cost up to 15 s is realtime, up to 180 s batch, above that background."""
    scheduler = load_settings().scheduler
    assert lane_by_cost(15.0, scheduler) is Lane.REALTIME
    assert lane_by_cost(15.1, scheduler) is Lane.BATCH
    assert lane_by_cost(181.0, scheduler) is Lane.BACKGROUND


def test_cost_grows_with_samples_pixels_and_steps() -> None:
    """A 1024px 50-step job costs far more than a 512px 4-step one; the cost model
    follows measured step times."""
    model = CostModel(StepModel())
    short = model.job_cost_s("m", steps=4, rows=rows_for(4, 7.0), width=512, height=512)
    long = model.job_cost_s("m", steps=50, rows=rows_for(4, 7.0), width=1024, height=1024)
    assert long > 40 * short
    model.observe("m", rows=8, width=512, height=512, step_s=1.0)
    assert model.job_cost_s("m", steps=4, rows=8, width=512, height=512) == pytest.approx(4.0)
    assert rows_for(4, 1.0) == 4 and rows_for(4, None) == 8


def test_classify_follows_speed_tier_and_budget() -> None:
    """Relax goes to background, turbo lifts batch-sized work for tiers that have it,
    a tier without turbo gets fast, and a spent fast budget falls back to relax."""
    scheduler = load_settings().scheduler
    tiers = scheduler.tiers
    assert classify(50.0, None, "pro", tiers["pro"], scheduler).lane is Lane.BATCH
    assert classify(50.0, Speed.TURBO, "pro", tiers["pro"], scheduler).lane is Lane.REALTIME
    free_turbo = classify(50.0, Speed.TURBO, "free", tiers["free"], scheduler)
    assert free_turbo.lane is Lane.BATCH and "no turbo" in free_turbo.reason
    assert classify(1.0, Speed.RELAX, "pro", tiers["pro"], scheduler).lane is Lane.BACKGROUND
    spent = classify(1.0, Speed.FAST, "free", tiers["free"], scheduler, fast_left_s=0.0)
    assert spent.lane is Lane.BACKGROUND and spent.speed is Speed.RELAX
    assert "budget" in spent.reason


# -- preemption -------------------------------------------------------------------------


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
    assert sorted(victims(wanted, batch, 16, Rules())) == ["a", "b"]


def test_no_eviction_of_equal_priority_or_when_it_fits() -> None:
    """Work of the same lane is not evicted, and nothing is when the job fits."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    assert victims(wanted, [running("a", Lane.REALTIME, shape="1024")], 16, Rules()) == []
    assert victims(wanted, [running("a", Lane.BATCH, shape="512")], 16, Rules()) == []


def test_same_shape_evicts_least_urgent_latest_first_until_it_fits() -> None:
    """Rows are freed from the least urgent, most recently started jobs, no more than needed."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    batch = [
        running("bg", Lane.BACKGROUND, rows=4, shape="512", seq=1),
        running("b1", Lane.BATCH, rows=4, shape="512", seq=2),
        running("b2", Lane.BATCH, rows=4, shape="512", seq=3),
        running("b3", Lane.BATCH, rows=4, shape="512", seq=4),
    ]
    assert victims(wanted, batch, 16, Rules()) == ["bg", "b3"]


def test_anti_thrashing_protects_recent_and_often_preempted_jobs() -> None:
    """A job resumed fewer than min_steps ago, or preempted max_per_job times, stays."""
    wanted = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    rules = Rules(min_steps=4, max_per_job=2)
    assert victims(wanted, [running("a", Lane.BATCH, steps=3)], 16, rules) == []
    assert victims(wanted, [running("a", Lane.BATCH, preemptions=2)], 16, rules) == []
    assert victims(wanted, [running("a", Lane.BATCH, steps=4, preemptions=1)], 16, rules) == ["a"]
    assert victims(wanted, [running("a", Lane.BATCH)], 16, Rules(enabled=False)) == []


def test_aged_job_outranks_every_lane() -> None:
    """An aged background job ranks above fresh realtime work."""
    assert rank(Lane.BACKGROUND, True) < rank(Lane.REALTIME, False) < rank(Lane.BATCH, False)


def test_steps_until_start_follows_the_preemption_rules() -> None:
    """A waiting job starts after one step when it joins or may preempt, after the
    min_steps protection runs out, or once a job it may not preempt finishes."""
    rules = Rules(min_steps=4, max_per_job=2)
    rt = Candidate("rt", rank(Lane.REALTIME, False), 8, "512")
    assert steps_until_start(rt, [], 16, rules) == 0
    assert steps_until_start(rt, [running("a", Lane.BATCH, shape="512")], 16, rules) == 1
    assert steps_until_start(rt, [running("a", Lane.BATCH, steps=10)], 16, rules) == 1
    assert steps_until_start(rt, [running("a", Lane.BATCH, steps=1)], 16, rules) == 3
    capped = running("a", Lane.BATCH, preemptions=2, left=25)
    assert steps_until_start(rt, [capped, running("b", Lane.BATCH, steps=1)], 16, rules) == 25
    same = running("r", Lane.REALTIME, rows=12, shape="512", left=3)
    assert steps_until_start(rt, [same], 16, rules) == 3
    assert steps_until_start(rt, [running("a", Lane.BATCH)], 16, Rules(enabled=False)) == 40
