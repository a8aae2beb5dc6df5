"""Fair queuing and aging: the pure policy, driven by a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from backend.models import Lane
from backend.scheduling.fairness import AgingPolicy, ClaimFilter, FairQueue, Ticket

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
