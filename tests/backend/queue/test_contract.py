"""The JobQueue contract; every backend runs this same suite unchanged."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from backend.errors import LeaseLostError, QueueError
from backend.models import Job, JobSpec, Lane
from backend.queue.base import JobQueue, Lease, LostBecause
from backend.queue.memory import MemoryQueue
from backend.queue.redis import RedisQueue
from backend.scheduling.fairness import AgingPolicy, ClaimFilter
from config.settings import SchedulerSettings
from tests.conftest import REDIS_URL
from tests.fakes import FakeClock

QueueFactory = Callable[[FakeClock, AgingPolicy], JobQueue]
DEFAULTS = AgingPolicy.from_settings(SchedulerSettings())
# Strict finish-tag order within a lane: the fair-queuing arithmetic alone.
STRICT = replace(DEFAULTS, size_slack=0.0)


def _redis_queue(clock: FakeClock, aging: AgingPolicy) -> JobQueue:
    """A queue over the test Redis, in a namespace of its own (purged after the test)."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    return RedisQueue.from_url(REDIS_URL, namespace=namespace, aging=aging, fake_now_ms=clock.ms)


BACKENDS: dict[str, QueueFactory] = {
    "memory": lambda clock, aging: MemoryQueue(aging=aging, now_ms=clock.ms),
    "redis": _redis_queue,
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _backend(name: str, clock: FakeClock, aging: AgingPolicy) -> AsyncIterator[JobQueue]:
    backend = BACKENDS[name](clock, aging)
    yield backend
    if isinstance(backend, RedisQueue):
        await backend.purge()
    await backend.close()


@pytest.fixture(params=sorted(BACKENDS))
async def queue(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[JobQueue]:
    """A backend as the default settings order it."""
    async for backend in _backend(request.param, clock, DEFAULTS):
        yield backend


@pytest.fixture(params=sorted(BACKENDS))
async def strict(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[JobQueue]:
    """A backend in strict finish-tag order within a lane (no size slack)."""
    async for backend in _backend(request.param, clock, STRICT):
        yield backend


def make_job(
    job_id: str,
    lane: Lane = Lane.REALTIME,
    *,
    user_id: int = 7,
    tier: str = "free",
    cost_s: float = 1.0,
    weight: float = 1.0,
    max_running: int = 0,
) -> Job:
    spec = JobSpec(prompt=f"p {job_id}", seed=1, width=64, height=64)
    return Job(
        id=job_id,
        spec=spec,
        user_id=user_id,
        tier=tier,
        lane=lane,
        cost_s=cost_s,
        weight=weight,
        max_running=max_running,
    )


async def claim_all(queue: JobQueue, **kwargs: Any) -> list[str]:
    """Claim and ack until nothing is left; the ids in claim order."""
    order = []
    while (lease := await queue.claim("w", lease_s=10, **kwargs)) is not None:
        order.append(lease.job.id)
        await queue.ack(lease)
    return order


async def test_satisfies_protocol(queue: JobQueue) -> None:
    """The backend is a JobQueue."""
    assert isinstance(queue, JobQueue)


async def test_enqueue_is_idempotent_by_id(queue: JobQueue) -> None:
    """Enqueuing the same id twice keeps one job."""
    assert await queue.enqueue(make_job("a"))
    assert not await queue.enqueue(make_job("a"))
    assert await queue.depth() == 1


async def test_claim_gives_fifo_within_lane_and_lanes_in_order(queue: JobQueue) -> None:
    """Realtime before batch before background; first in, first out within a lane."""
    await queue.enqueue(make_job("bg", Lane.BACKGROUND))
    await queue.enqueue(make_job("b1", Lane.BATCH))
    await queue.enqueue(make_job("r1"))
    await queue.enqueue(make_job("r2"))
    order = []
    for _ in range(4):
        lease = await queue.claim("w", lease_s=10)
        assert lease is not None
        order.append(lease.job.id)
    assert order == ["r1", "r2", "b1", "bg"]
    assert await queue.claim("w", lease_s=10) is None


async def test_claimed_job_roundtrips_its_spec(queue: JobQueue) -> None:
    """The claimed job equals the enqueued one."""
    job = make_job("a")
    await queue.enqueue(job)
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None and lease.job == job and lease.attempt == 1


async def test_ack_forgets_and_a_repeated_ack_changes_nothing(queue: JobQueue) -> None:
    """After ack the job is gone; acking again (a retried call) is accepted and changes
    nothing, while a renew or requeue of the finished job is refused."""
    await queue.enqueue(make_job("a"))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None
    await queue.ack(lease)
    assert await queue.depth() == 0
    await queue.ack(lease)
    assert await queue.depth() == 0 and await queue.claim("w", lease_s=10) is None
    with pytest.raises(LeaseLostError) as lost:
        await queue.renew(lease, lease_s=10)
    assert lost.value.reason is LostBecause.UNKNOWN and lost.value.job_id == "a"
    with pytest.raises(LeaseLostError):
        await queue.requeue(lease, checkpoint=b"state")


async def test_expired_lease_is_reclaimed_and_old_holder_refused(
    queue: JobQueue, clock: FakeClock
) -> None:
    """A lease not renewed in time returns the job to the queue; its holder loses it."""
    await queue.enqueue(make_job("a"))
    first = await queue.claim("w1", lease_s=5)
    assert first is not None
    clock.advance(6_000)
    second = await queue.claim("w2", lease_s=5)
    assert second is not None and second.job.id == "a" and second.attempt == 2
    with pytest.raises(LeaseLostError) as lost:
        await queue.renew(first, lease_s=5)
    assert lost.value.reason is LostBecause.SUPERSEDED
    assert isinstance(lost.value, QueueError)


async def expire_unreclaimed(queue: JobQueue, clock: FakeClock, job_id: str = "a") -> Lease:
    """A lease on ``job_id`` that has expired, with no claim or peek since."""
    await queue.enqueue(make_job(job_id, user_id=1, max_running=1))
    lease = await queue.claim("w1", lease_s=5)
    assert lease is not None and lease.job.id == job_id
    clock.advance(6_000)
    return lease


async def test_late_ack_of_an_expired_lease_is_accepted(queue: JobQueue, clock: FakeClock) -> None:
    """An ack after the lease expired, before anyone reclaimed the job, finishes it for
    good: it is never handed out again, and its user's running slot is free."""
    lease = await expire_unreclaimed(queue, clock)
    await queue.ack(lease)
    assert await queue.claim("w2", lease_s=5) is None
    await queue.enqueue(make_job("b", user_id=1, max_running=1))
    after = await queue.claim("w2", lease_s=5)
    assert after is not None and after.job.id == "b"


async def test_late_ack_of_a_reclaimed_job_nobody_took_is_accepted(
    queue: JobQueue, clock: FakeClock
) -> None:
    """An expired job that a peek put back in the queue, unclaimed since, is still its
    last holder's to ack: the ack takes it out of the queue."""
    await queue.enqueue(make_job("other", Lane.BATCH, user_id=2, cost_s=3.0))
    lease = await expire_unreclaimed(queue, clock)
    head = await queue.peek()
    assert head is not None and head.job.id == "a"
    assert await queue.depth() == 2
    await queue.ack(lease)
    assert await queue.depth() == 1 and await queue.position("a") is None
    assert await queue.queued_cost_s() == pytest.approx(3.0)
    assert await claim_all(queue) == ["other"]


async def test_late_requeue_of_an_expired_lease_is_accepted(
    queue: JobQueue, clock: FakeClock
) -> None:
    """A requeue after the lease expired gives the job back with its checkpoint, once;
    after a reclaim it only adds the checkpoint to the job waiting in the queue."""
    lease = await expire_unreclaimed(queue, clock)
    await queue.requeue(lease, checkpoint=b"step 3")
    again = await queue.claim("w2", lease_s=5)
    assert again is not None and again.attempt == 2 and again.checkpoint == b"step 3"
    assert await queue.claim("w3", lease_s=5) is None
    clock.advance(6_000)
    assert await queue.peek() is not None  # reclaims it: queued, nobody holds it
    await queue.requeue(again, checkpoint=b"step 7")
    assert await queue.depth() == 1
    last = await queue.claim("w3", lease_s=5)
    assert last is not None and last.attempt == 3 and last.checkpoint == b"step 7"


async def test_stale_ack_is_refused_and_the_new_holder_keeps_the_job(
    queue: JobQueue, clock: FakeClock
) -> None:
    """Once another worker has claimed the expired job, the old holder's ack and requeue
    are refused (its result is to be discarded) and the new lease stays intact."""
    stale = await expire_unreclaimed(queue, clock)
    fresh = await queue.claim("w2", lease_s=5)
    assert fresh is not None and fresh.attempt == 2
    with pytest.raises(LeaseLostError) as lost:
        await queue.ack(stale)
    assert lost.value.reason is LostBecause.SUPERSEDED and lost.value.worker_id == "w1"
    with pytest.raises(LeaseLostError):
        await queue.requeue(stale, checkpoint=b"old")
    assert await queue.depth() == 0 and await queue.claim("w3", lease_s=5) is None
    fresh = await queue.renew(fresh, lease_s=5)
    await queue.ack(fresh)
    assert await queue.claim("w3", lease_s=5) is None


async def test_renew_of_an_expired_lease_nobody_reclaimed_extends_it(
    queue: JobQueue, clock: FakeClock
) -> None:
    """A holder that renews late, before anyone reclaimed the job, keeps it: the lease
    runs ``lease_s`` from the renewal and no claim takes the job meanwhile."""
    lease = await expire_unreclaimed(queue, clock)
    lease = await queue.renew(lease, lease_s=5)
    assert lease.expires_at_ms == clock.ms() + 5_000
    clock.advance(4_000)
    assert await queue.claim("w2", lease_s=5) is None
    await queue.ack(lease)


async def test_renew_after_a_reclaim_is_refused(queue: JobQueue, clock: FakeClock) -> None:
    """Once the expired job is back in the queue its old holder cannot renew (it must
    stop), and the job goes to the next claim."""
    lease = await expire_unreclaimed(queue, clock)
    assert await queue.peek() is not None
    with pytest.raises(LeaseLostError) as lost:
        await queue.renew(lease, lease_s=5)
    assert lost.value.reason is LostBecause.RECLAIMED
    again = await queue.claim("w2", lease_s=5)
    assert again is not None and again.job.id == "a" and again.attempt == 2


async def test_renew_extends_the_lease(queue: JobQueue, clock: FakeClock) -> None:
    """A renewed lease outlives its original expiry."""
    await queue.enqueue(make_job("a"))
    lease = await queue.claim("w", lease_s=5)
    assert lease is not None
    clock.advance(4_000)
    lease = await queue.renew(lease, lease_s=5)
    clock.advance(4_000)
    assert await queue.claim("w2", lease_s=5) is None
    await queue.ack(lease)


async def test_requeue_keeps_checkpoint_and_goes_first(queue: JobQueue) -> None:
    """A requeued job comes back ahead of its lane with its checkpoint."""
    await queue.enqueue(make_job("a"))
    await queue.enqueue(make_job("b"))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == "a"
    await queue.requeue(lease, checkpoint=b"state")
    again = await queue.claim("w", lease_s=10)
    assert again is not None and again.job.id == "a" and again.checkpoint == b"state"


async def test_cancel_queued_and_running(queue: JobQueue) -> None:
    """Cancelling a queued job removes it; a running one is flagged; unknown ids say False."""
    await queue.enqueue(make_job("a"))
    await queue.enqueue(make_job("b"))
    assert await queue.cancel("b")
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == "a"
    assert await queue.cancel("a")
    assert await queue.is_cancelled("a")
    assert await queue.claim("w", lease_s=10) is None
    assert not await queue.cancel("nope")


async def test_depth_and_position_per_lane(queue: JobQueue) -> None:
    """Depth counts queued jobs per lane; position is the 0-based place in its lane."""
    for name in ("a", "b", "c"):
        await queue.enqueue(make_job(name))
    await queue.enqueue(make_job("x", Lane.BATCH))
    assert await queue.depth(Lane.REALTIME) == 3
    assert await queue.depth(Lane.BATCH) == 1
    assert await queue.position("c") == 2
    assert await queue.position("x") == 0
    assert await queue.position("missing") is None


async def test_claim_waits_for_a_job(queue: JobQueue) -> None:
    """A claim with wait_s returns as soon as a job is enqueued."""

    async def later() -> None:
        await asyncio.sleep(0.05)
        await queue.enqueue(make_job("late"))

    task = asyncio.create_task(later())
    lease = await queue.claim("w", lease_s=10, wait_s=2.0)
    await task
    assert lease is not None and lease.job.id == "late"


async def test_fair_share_across_users_by_weight(queue: JobQueue) -> None:
    """A flooding user does not go first: a weight-2 user gets two jobs per one of a
    weight-1 user's, whoever enqueued first (by finish tag: p0 0.5, f0 1, p1 1, p2 1.5,
    f1 2, p3 2; equal tags go in enqueue order)."""
    for i in range(6):
        await queue.enqueue(make_job(f"f{i}", user_id=1, weight=1.0))
    for i in range(4):
        await queue.enqueue(make_job(f"p{i}", user_id=2, tier="basic", weight=2.0))
    order = await claim_all(queue)
    assert order[:6] == ["p0", "f0", "p1", "p2", "f1", "p3"]
    assert order[6:] == ["f2", "f3", "f4", "f5"]


async def test_fair_share_counts_cost(strict: JobQueue) -> None:
    """The order is size-aware and fair: the other user's cheap jobs go before an
    expensive job enqueued earlier, until their service catches up with its finish tag
    (small0..2 end at 1, 2, 3; big1 at 4 ties small3 and was enqueued first), and the
    expensive user's second job waits for its own first."""
    queue = strict
    await queue.enqueue(make_job("big1", user_id=1, cost_s=4.0))
    await queue.enqueue(make_job("big2", user_id=1, cost_s=4.0))
    for i in range(4):
        await queue.enqueue(make_job(f"small{i}", user_id=2, cost_s=1.0))
    assert await claim_all(queue) == ["small0", "small1", "small2", "big1", "small3", "big2"]


async def test_the_cheapest_job_within_the_size_slack_goes_first(queue: JobQueue) -> None:
    """By default the lane serves, of the jobs whose finish tag is within the slack
    (30 virtual seconds) of the first one's, the cheapest: the second user's quick jobs
    (tags 1..4) and then their 16 s job (tag 20, cost 16) go before the first user's
    20 s one (tag 20, enqueued first)."""
    await queue.enqueue(make_job("long", user_id=1, cost_s=20.0))
    for i in range(4):
        await queue.enqueue(make_job(f"q{i}", user_id=2, cost_s=1.0))
    await queue.enqueue(make_job("mid", user_id=2, cost_s=16.0))
    assert await claim_all(queue) == ["q0", "q1", "q2", "q3", "mid", "long"]


async def test_the_size_slack_bounds_how_far_a_user_falls_behind(queue: JobQueue) -> None:
    """A cheaper job goes first only while its finish tag is within the slack of the
    first one's: "quick" (tag 3 / 0.1 = 30) passes "other" (tag 10), "slow" (tag 50)
    does not, though it costs half as much. Strict order would serve "other" first;
    no slack bound would serve "slow" before it."""
    await queue.enqueue(make_job("other", user_id=1, cost_s=10.0))
    await queue.enqueue(make_job("slow", user_id=2, tier="t", cost_s=5.0, weight=0.1))
    await queue.enqueue(make_job("quick", user_id=3, tier="t", cost_s=3.0, weight=0.1))
    assert await claim_all(queue) == ["quick", "other", "slow"]


async def test_a_users_cheap_job_goes_before_their_own_costly_ones(strict: JobQueue) -> None:
    """Within one user's queued jobs the cheapest goes first, and the user's share is
    unchanged: the other user's jobs interleave exactly as they would have (user 1's
    tags are laid out again from 0 as q 1, big 5, big2 9; user 2's are 2, 4, 6)."""
    queue = strict
    await queue.enqueue(make_job("big", user_id=1, cost_s=4.0))
    await queue.enqueue(make_job("big2", user_id=1, cost_s=4.0))
    for i in range(3):
        await queue.enqueue(make_job(f"o{i}", user_id=2, cost_s=2.0))
    await queue.enqueue(make_job("q", user_id=1, cost_s=1.0))
    assert await queue.position("q") == 0
    assert await claim_all(queue) == ["q", "o0", "o1", "big", "o2", "big2"]


async def test_virtual_time_moves_with_the_work_served(queue: JobQueue) -> None:
    """A user with work queued keeps their share while light users come and go: each
    claim moves the lane's virtual time on by its cost over the waiting users' weight
    (a1 and x each by 1/2), so a newcomer after them starts at 1 and goes after the
    waiting user's a2 (finish 2, enqueued first), not before it."""
    for i in range(1, 4):
        await queue.enqueue(make_job(f"a{i}", user_id=1))
    await queue.enqueue(make_job("x", user_id=2))
    assert [await _claim_ack(queue) for _ in range(2)] == ["a1", "x"]
    await queue.enqueue(make_job("y", user_id=3))
    assert await claim_all(queue) == ["a2", "y", "a3"]


async def _claim_ack(queue: JobQueue) -> str:
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None
    await queue.ack(lease)
    return lease.job.id


async def test_a_cheap_job_does_not_pass_its_owners_job_that_ran(queue: JobQueue) -> None:
    """A job given back (preempted) keeps its tags: its owner's later cheap job is laid
    out after it, not before."""
    await queue.enqueue(make_job("big", user_id=1, cost_s=4.0))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == "big"
    await queue.requeue(lease, checkpoint=b"state")
    await queue.enqueue(make_job("q", user_id=1, cost_s=1.0))
    assert await claim_all(queue) == ["big", "q"]


async def test_a_paused_job_frees_its_users_running_slot(queue: JobQueue) -> None:
    """A job paused in place does not count against its user's cap: their next job may
    start; running again it counts again (over the cap), and finishing either job
    releases exactly one slot, however often the pause was reported."""
    await queue.enqueue(make_job("a", user_id=1, max_running=1))
    await queue.enqueue(make_job("b", user_id=1, max_running=1))
    await queue.enqueue(make_job("c", user_id=1, max_running=1))
    first = await queue.claim("w", lease_s=10)
    assert first is not None and first.job.id == "a"
    assert await queue.claim("w", lease_s=10) is None  # at the cap
    await queue.set_paused(first, True)
    await queue.set_paused(first, True)
    second = await queue.claim("w", lease_s=10)
    assert second is not None and second.job.id == "b"
    await queue.set_paused(first, False)
    await queue.set_paused(first, False)
    await queue.ack(second)
    assert await queue.claim("w", lease_s=10) is None  # "a" runs: at the cap again
    await queue.set_paused(first, True)
    third = await queue.claim("w", lease_s=10)
    assert third is not None and third.job.id == "c"
    await queue.requeue(first, checkpoint=b"state")  # given back while paused
    assert await queue.claim("w", lease_s=10) is None  # "c" holds the only slot
    await queue.ack(third)
    assert await claim_all(queue) == ["a"]


async def test_aged_job_goes_before_higher_lanes(queue: JobQueue, clock: FakeClock) -> None:
    """Once a job has waited half its lane's bound it is served first, across lanes."""
    await queue.enqueue(make_job("old", Lane.BATCH))
    clock.advance(149_000)
    await queue.enqueue(make_job("rt"))
    head = await queue.peek()
    assert head is not None and head.job.id == "rt" and not head.aged
    clock.advance(1_000)
    head = await queue.peek()
    assert head is not None and head.job.id == "old" and head.aged
    assert await claim_all(queue) == ["old", "rt"]


async def test_an_aged_job_lets_a_much_smaller_one_go_first(
    queue: JobQueue, clock: FakeClock
) -> None:
    """An aged job goes before a job of comparable cost, but not before one of at most
    a quarter of its cost (the default yield ratio, the preemption size ratio): that
    delays it by little."""
    await queue.enqueue(make_job("old", Lane.BATCH, cost_s=8.0))
    clock.advance(150_000)
    await queue.enqueue(make_job("peer", cost_s=4.0))
    await queue.enqueue(make_job("quick", user_id=8, cost_s=1.0))
    head = await queue.peek()
    assert head is not None and head.job.id == "quick" and not head.aged
    assert await claim_all(queue) == ["quick", "old", "peer"]


async def test_requeued_job_waits_afresh_before_aging(queue: JobQueue, clock: FakeClock) -> None:
    """A preempted job's aging clock restarts: it does not come back aged and outrank
    the job it made room for, and ages again after another half bound of waiting."""
    await queue.enqueue(make_job("old", Lane.BATCH))
    clock.advance(150_000)
    lease = await queue.claim("w", lease_s=1000)
    assert lease is not None and lease.job.id == "old"
    await queue.enqueue(make_job("rt"))
    await queue.requeue(lease, checkpoint=b"state")
    head = await queue.peek()
    assert head is not None and head.job.id == "rt" and not head.aged
    rt = await queue.claim("w", lease_s=1000)
    assert rt is not None and rt.job.id == "rt"
    head = await queue.peek()
    assert head is not None and head.job.id == "old" and not head.aged
    clock.advance(150_000)
    head = await queue.peek()
    assert head is not None and head.job.id == "old" and head.aged


async def test_requeued_job_keeps_its_place(queue: JobQueue) -> None:
    """A preempted job resumes ahead of jobs that arrived while it ran (the boost)."""
    await queue.enqueue(make_job("a", user_id=1))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None
    await queue.enqueue(make_job("b", user_id=2))
    await queue.enqueue(make_job("c", user_id=3))
    await queue.requeue(lease, checkpoint=b"state")
    assert await queue.position("a") == 0
    assert await claim_all(queue) == ["a", "b", "c"]


async def test_running_cap_skips_the_user(queue: JobQueue) -> None:
    """A user at their running cap is skipped until one of their jobs is acked."""
    await queue.enqueue(make_job("a1", user_id=1, max_running=1))
    await queue.enqueue(make_job("a2", user_id=1, max_running=1))
    await queue.enqueue(make_job("b1", user_id=2, max_running=1))
    first = await queue.claim("w", lease_s=10)
    second = await queue.claim("w", lease_s=10)
    assert first is not None and second is not None
    assert (first.job.id, second.job.id) == ("a1", "b1")
    assert await queue.claim("w", lease_s=10) is None
    await queue.ack(first)
    third = await queue.claim("w", lease_s=10)
    assert third is not None and third.job.id == "a2"


async def test_claim_filter_pauses_tiers_and_lanes(queue: JobQueue) -> None:
    """Excluded tiers and lanes stay queued; the rest is served in order."""
    await queue.enqueue(make_job("free-rt", user_id=1))
    await queue.enqueue(make_job("pro-batch", Lane.BATCH, user_id=2, tier="pro"))
    await queue.enqueue(make_job("pro-rt", user_id=3, tier="pro"))
    only_paid_rt = ClaimFilter(exclude_tiers=frozenset({"free"}), lanes=frozenset({Lane.REALTIME}))
    assert await claim_all(queue, allow=only_paid_rt) == ["pro-rt"]
    assert await queue.depth() == 2
    assert await claim_all(queue) == ["free-rt", "pro-batch"]


async def test_queued_cost_and_peek(queue: JobQueue) -> None:
    """queued_cost_s sums queued estimates per lane; peek leaves the job queued."""
    await queue.enqueue(make_job("a", cost_s=2.5))
    await queue.enqueue(make_job("b", Lane.BATCH, cost_s=10.0))
    assert await queue.queued_cost_s() == pytest.approx(12.5)
    assert await queue.queued_cost_s(Lane.BATCH) == pytest.approx(10.0)
    head = await queue.peek()
    assert head is not None and head.job.id == "a"
    assert await queue.depth() == 2
    assert await queue.peek(ClaimFilter(lanes=frozenset({Lane.BACKGROUND}))) is None


async def test_expired_lease_frees_the_running_slot(queue: JobQueue, clock: FakeClock) -> None:
    """A lost worker's lease expiring gives the job back and its user's running slot."""
    await queue.enqueue(make_job("a", user_id=1, max_running=1))
    await queue.enqueue(make_job("b", user_id=1, max_running=1))
    lease = await queue.claim("w1", lease_s=1)
    assert lease is not None and lease.job.id == "a"
    clock.advance(1_001)
    again = await queue.claim("w2", lease_s=10)
    assert again is not None and again.job.id == "a" and again.attempt == 2
