"""What only the Redis queue has to get right: keys, TTLs, payloads, sharing, atomicity,
and the same order as the memory backend, to the last tie."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.errors import QueueError
from backend.models import Lane
from backend.queue import aging_policy, make_queue
from backend.queue.base import JobQueue, Lease
from backend.queue.memory import MemoryQueue
from backend.queue.redis import JOB_TTL_S, RedisQueue
from backend.scheduling.fairness import EVERYTHING, ClaimFilter
from config.settings import load_settings
from tests.backend.queue.test_contract import make_job
from tests.conftest import REDIS_URL
from tests.fakes import FakeClock


@pytest.fixture
async def queue(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> AsyncIterator[RedisQueue]:
    backend = RedisQueue(redis_client, namespace=redis_namespace, now_ms=clock.ms)
    yield backend
    await backend.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_namespaces_do_not_see_each_other(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """Two namespaces on one Redis are two queues: jobs, depths and claims stay apart."""
    first = RedisQueue(redis_client, namespace=f"{redis_namespace}:a", now_ms=clock.ms)
    second = RedisQueue(redis_client, namespace=f"{redis_namespace}:b", now_ms=clock.ms)
    await first.enqueue(make_job("a"))
    assert await second.enqueue(make_job("a"))  # the same id is new over there
    await second.enqueue(make_job("b"))
    assert (await first.depth(), await second.depth()) == (1, 2)
    lease = await first.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == "a"
    assert await first.claim("w", lease_s=10) is None
    assert await second.position("b") == 1
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_namespace}:*")]
    assert keys and all(key.startswith(f"{redis_namespace}:".encode()) for key in keys)


async def test_orphanable_keys_carry_a_ttl(queue: RedisQueue, redis_client: Redis) -> None:
    """Job hashes (queued, leased, cancelled) and running counters expire if left behind."""
    await queue.enqueue(make_job("a", user_id=5, max_running=1))
    await queue.enqueue(make_job("b", user_id=5))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None
    await queue.cancel(lease.job.id)
    for key in (queue.key("job:a"), queue.key("job:b"), queue.key("running:5")):
        assert 0 < await redis_client.ttl(key) <= JOB_TTL_S, key
    await queue.ack(lease)
    assert not await redis_client.exists(queue.key("job:a"), queue.key("running:5"))


async def test_payload_is_json_and_checkpoint_raw_bytes(
    queue: RedisQueue, redis_client: Redis
) -> None:
    """The stored job is its JSON form and a checkpoint is kept byte for byte, no pickle."""
    job = make_job("a")
    await queue.enqueue(job)
    stored = await redis_client.hget(queue.key("job:a"), "payload")
    assert stored is not None and json.loads(stored) == json.loads(job.to_json())
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None
    state = bytes(range(256)) * 4
    await queue.requeue(lease, checkpoint=state)
    assert await redis_client.hget(queue.key("job:a"), "checkpoint") == state
    again = await queue.claim("w", lease_s=10)
    assert again is not None and again.checkpoint == state and again.job == job


async def test_state_survives_a_new_client(
    queue: RedisQueue, redis_namespace: str, clock: FakeClock
) -> None:
    """A second queue over a fresh connection sees the queued jobs, the leases and the
    fair order the first one left."""
    for i in range(3):
        await queue.enqueue(make_job(f"a{i}", user_id=1))
    await queue.enqueue(make_job("b0", user_id=2))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == "a0"
    await queue.close()
    other = RedisQueue.from_url(REDIS_URL, namespace=redis_namespace, now_ms=clock.ms)
    try:
        assert await other.depth() == 3
        await other.ack(lease)
        order = []
        while (next_lease := await other.claim("w", lease_s=10)) is not None:
            order.append(next_lease.job.id)
        assert order == ["b0", "a1", "a2"]
    finally:
        await other.close()


async def test_concurrent_claims_never_share_a_job(
    queue: RedisQueue, redis_namespace: str, clock: FakeClock
) -> None:
    """20 claims racing from four connections over 10 jobs give 10 distinct leases."""
    for i in range(10):
        await queue.enqueue(make_job(f"j{i}", user_id=i % 3))
    workers = [
        RedisQueue.from_url(REDIS_URL, namespace=redis_namespace, now_ms=clock.ms) for _ in range(4)
    ]
    try:
        leases = await asyncio.gather(
            *(workers[n % 4].claim(f"w{n}", lease_s=10) for n in range(20))
        )
    finally:
        for worker in workers:
            await worker.close()
    taken = [lease.job.id for lease in leases if lease is not None]
    assert sorted(taken) == sorted(f"j{i}" for i in range(10))
    assert await queue.depth() == 0


async def test_expired_job_hash_is_skipped_and_cleaned(
    queue: RedisQueue, redis_client: Redis
) -> None:
    """A queued job whose hash expired is not served; a claim drops its stale entries."""
    await queue.enqueue(make_job("gone"))
    await queue.enqueue(make_job("kept"))
    await redis_client.delete(queue.key("job:gone"))
    lease = await queue.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == "kept"
    assert await redis_client.zcard(queue.key("tag:realtime")) == 0
    assert await redis_client.zcard(queue.key("age:realtime")) == 0


async def test_decoding_client_is_refused(redis_namespace: str) -> None:
    """A client that decodes replies to str would mangle checkpoints: refused up front."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(QueueError, match="decode_responses"):
            RedisQueue(client, namespace=redis_namespace)
    finally:
        await client.aclose()


async def test_unreachable_redis_is_a_queue_error() -> None:
    """A connection failure surfaces as QueueError, not as a redis exception."""
    queue = RedisQueue.from_url("redis://127.0.0.1:1/0", namespace="nowhere")
    try:
        with pytest.raises(QueueError, match="nowhere"):
            await queue.enqueue(make_job("a"))
    finally:
        await queue.close()


async def test_make_queue_builds_redis_with_the_settings_aging() -> None:
    """queue.backend=redis gives a RedisQueue in the configured namespace, aging from
    the scheduler settings."""
    settings = load_settings(
        queue={"backend": "redis", "namespace": "made"},
        scheduler={"realtime_max_wait_s": 10.0, "aging_fraction": 0.25},
    )
    queue = make_queue(settings)
    try:
        assert isinstance(queue, RedisQueue) and queue.namespace == "made"
        assert queue.aging == aging_policy(settings.scheduler)
        assert queue.aging.aged_after_ms(Lane.REALTIME) == 2_500
    finally:
        await queue.close()


# -- the differential test ----------------------------------------------------------------

FILTERS = (
    EVERYTHING,
    EVERYTHING,
    EVERYTHING,
    ClaimFilter(exclude_tiers=frozenset({"free"})),
    ClaimFilter(lanes=frozenset({Lane.REALTIME})),
    ClaimFilter(lanes=frozenset({Lane.BATCH, Lane.BACKGROUND})),
)


class Twins:
    """The memory and the Redis queue driven in lockstep; every outcome must agree."""

    def __init__(self, memory: MemoryQueue, redis: RedisQueue, clocks: list[FakeClock]) -> None:
        self.queues: tuple[JobQueue, JobQueue] = (memory, redis)
        self.clocks = clocks
        self.held: tuple[list[Lease], list[Lease]] = ([], [])
        self.claimed: list[str] = []
        self.step = 0

    async def same(self, what: str, op: Callable[[int, JobQueue], Awaitable[Any]]) -> Any:
        outcomes = []
        for side, queue in enumerate(self.queues):
            try:
                outcomes.append(await op(side, queue))
            except QueueError:
                outcomes.append("QueueError")
        assert outcomes[0] == outcomes[1], f"step {self.step}: {what}"
        return outcomes[0]

    async def call(self, method: str, *args: Any) -> Any:
        """The same query or change on both queues, e.g. ``call("cancel", job_id)``."""
        return await self.same(f"{method}{args}", lambda _, q: getattr(q, method)(*args))

    async def claim(self, lease_s: float, allow: ClaimFilter) -> Any:
        async def op(side: int, queue: JobQueue) -> Any:
            lease = await queue.claim("w", lease_s=lease_s, allow=allow)
            if lease is None:
                return None
            self.held[side].append(lease)
            return (lease.job.id, lease.attempt, lease.checkpoint)

        taken = await self.same(f"claim {allow}", op)
        if taken is not None:
            self.claimed.append(taken[0])
        return taken

    async def give_back(self, index: int, how: str, checkpoint: bytes | None) -> None:
        async def op(side: int, queue: JobQueue) -> Any:
            lease = self.held[side].pop(index)
            if how == "ack":
                await queue.ack(lease)
            else:
                await queue.requeue(lease, checkpoint=checkpoint)
            return how

        await self.same(f"{how} #{index}", op)

    def advance(self, ms: int) -> None:
        for clock in self.clocks:
            clock.advance(ms)


def _users(rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "user_id": uid,
            "tier": rng.choice(("free", "basic", "pro")),
            "weight": rng.choice((1.0, 1.5, 2.0, 3.0, 4.0)),
            "max_running": rng.choice((0, 0, 1, 2)),
        }
        for uid in range(40)
    ]


async def _look(twins: Twins, rng: random.Random, ids: list[str]) -> None:
    job_id = rng.choice(ids)
    lane = rng.choice((None, *Lane))
    await twins.call("peek", rng.choice(FILTERS))
    await twins.call("position", job_id)
    await twins.call("depth", lane)
    await twins.call("is_cancelled", job_id)
    costs = [await q.queued_cost_s(lane) for q in twins.queues]
    assert costs[1] == pytest.approx(costs[0], abs=1e-3), f"step {twins.step}: cost"


async def test_claim_order_matches_the_memory_backend(
    redis_client: Redis, redis_namespace: str
) -> None:
    """1000 jobs of a random mix of users, weights, costs, caps and lanes, claimed under
    filters, with acks, requeues, expiries, cancels and aging on one fake timeline, come
    out of Redis exactly as out of the memory backend."""
    rng = random.Random(20_240_611)
    clocks = [FakeClock(), FakeClock()]
    twins = Twins(
        MemoryQueue(now_ms=clocks[0].ms),
        RedisQueue(redis_client, namespace=redis_namespace, now_ms=clocks[1].ms),
        clocks,
    )
    users = _users(rng)
    ids: list[str] = []
    while len(ids) < 1000 or await twins.queues[0].depth() or twins.held[0]:
        twins.step += 1
        roll = rng.random()
        held = len(twins.held[0])
        if len(ids) < 1000 and roll < 0.3:
            for _ in range(rng.randint(1, 4)):
                job_id = f"j{len(ids)}"
                ids.append(job_id)
                cost_s = rng.choice((0.0, rng.uniform(0.05, 10.0), rng.uniform(10.0, 200.0)))
                job = make_job(job_id, rng.choice(list(Lane)), cost_s=cost_s, **rng.choice(users))
                await twins.call("enqueue", job)
        elif held < 6 and roll < 0.65:
            await twins.claim(rng.choice((1.0, 60.0, 60.0)), rng.choice(FILTERS))
        elif held and roll < 0.85:
            how = "ack" if rng.random() < 0.7 else "requeue"
            checkpoint = rng.choice((None, rng.randbytes(8)))
            await twins.give_back(rng.randrange(held), how, checkpoint)
        elif ids and roll < 0.88:
            job_id = rng.choice(ids)
            await twins.call("cancel", job_id)
        elif roll < 0.96:
            twins.advance(rng.choice((50, 1_500, 1_500, 20_000)))
        else:
            await _look(twins, rng, ids or ["none"])
    while await twins.claim(60.0, EVERYTHING) is not None:
        await twins.give_back(0, "ack", None)
    assert len(set(twins.claimed)) > 800 and len(twins.claimed) > 1000
    assert await twins.queues[1].depth() == 0
