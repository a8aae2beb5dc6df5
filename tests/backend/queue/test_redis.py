"""What only the Redis queue has to get right: keys, TTLs, payloads, sharing, atomicity,
and the same order as the memory backend, to the last tie."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.errors import LeaseLostError, QueueError, QueueUnavailableError
from backend.models import Lane
from backend.queue import aging_policy, make_queue
from backend.queue.base import JobQueue, Lease, LostBecause
from backend.queue.memory import MemoryQueue
from backend.queue.redis import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, JOB_TTL_S, RedisQueue
from backend.scheduling.fairness import EVERYTHING, AgingPolicy, ClaimFilter
from config.settings import load_settings
from tests.backend.queue.test_contract import make_job
from tests.conftest import REDIS_URL
from tests.fakes import FakeClock
from tests.redis_server import PrivateRedis


@pytest.fixture
async def queue(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> AsyncIterator[RedisQueue]:
    backend = RedisQueue(redis_client, namespace=redis_namespace, fake_now_ms=clock.ms)
    yield backend
    await backend.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_namespaces_do_not_see_each_other(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """Two namespaces on one Redis are two queues: jobs, depths and claims stay apart."""
    first = RedisQueue(redis_client, namespace=f"{redis_namespace}:a", fake_now_ms=clock.ms)
    second = RedisQueue(redis_client, namespace=f"{redis_namespace}:b", fake_now_ms=clock.ms)
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
    other = RedisQueue.from_url(REDIS_URL, namespace=redis_namespace, fake_now_ms=clock.ms)
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
        RedisQueue.from_url(REDIS_URL, namespace=redis_namespace, fake_now_ms=clock.ms)
        for _ in range(4)
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


async def test_unreachable_redis_is_a_queue_unavailable_error() -> None:
    """A connection failure surfaces as QueueUnavailableError naming the queue, not as
    a redis exception."""
    queue = RedisQueue.from_url("redis://127.0.0.1:1/0", namespace="nowhere")
    try:
        with pytest.raises(QueueUnavailableError, match="nowhere") as caught:
            await queue.enqueue(make_job("a"))
        assert isinstance(caught.value, QueueError) and caught.value.namespace == "nowhere"
    finally:
        await queue.close()


# -- the server's clock ---------------------------------------------------------------------


async def server_ms(client: Redis) -> int:
    """The Redis server's clock, in epoch milliseconds."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_a_host_clock_running_ahead_does_not_steal_a_lease(
    redis_client: Redis, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on a host whose clock runs 10 minutes ahead sees a healthy lease as the
    server does: it cannot claim the job, and the holder renews and acks it."""
    holder = RedisQueue(redis_client, namespace=redis_namespace)
    await holder.enqueue(make_job("a"))
    lease = await holder.claim("w1", lease_s=30)
    assert lease is not None
    real_time, real_time_ns = time.time, time.time_ns
    with monkeypatch.context() as host:
        host.setattr(time, "time", lambda: real_time() + 600)
        host.setattr(time, "time_ns", lambda: real_time_ns() + 600 * 10**9)
        ahead = RedisQueue.from_url(REDIS_URL, namespace=redis_namespace)
        try:
            assert await ahead.claim("w2", lease_s=30) is None
            assert await ahead.peek() is None
        finally:
            await ahead.close()
    lease = await holder.renew(lease, lease_s=30)
    await holder.ack(lease)


async def test_leases_are_timed_by_the_server_clock(
    redis_client: Redis, redis_namespace: str
) -> None:
    """A lease runs ``lease_s`` on the server's clock, and expires by it: the next
    claim after that takes the job."""
    queue = RedisQueue(redis_client, namespace=redis_namespace)
    await queue.enqueue(make_job("a"))
    before = await server_ms(redis_client)
    lease = await queue.claim("w1", lease_s=0.6)
    after = await server_ms(redis_client)
    assert lease is not None and before + 600 <= lease.expires_at_ms <= after + 600
    assert await queue.claim("w2", lease_s=10) is None
    await asyncio.sleep(0.7)
    again = await queue.claim("w2", lease_s=10)
    assert again is not None and again.job.id == "a" and again.attempt == 2


async def test_aging_is_timed_by_the_server_clock(
    redis_client: Redis, redis_namespace: str
) -> None:
    """A batch job's wait is measured on the server's clock: once it passes the aging
    bound, the job goes before a newer realtime one."""
    seconds = {Lane.REALTIME: 60.0, Lane.BATCH: 2.0, Lane.BACKGROUND: 60.0}
    aging = AgingPolicy.from_seconds(seconds, 0.5)  # a batch job ages after 1 s
    queue = RedisQueue(redis_client, namespace=redis_namespace, aging=aging)
    await queue.enqueue(make_job("old", Lane.BATCH))
    await queue.enqueue(make_job("rt"))
    head = await queue.peek()
    assert head is not None and head.job.id == "rt" and not head.aged
    await asyncio.sleep(1.05)
    head = await queue.peek()
    assert head is not None and head.job.id == "old" and head.aged


# -- a Redis that goes away -------------------------------------------------------------------


async def test_calls_fail_as_unavailable_while_redis_is_down_and_work_once_back(
    private_redis: PrivateRedis,
) -> None:
    """With Redis stopped every call raises QueueUnavailableError at once (a waiting
    claim too); once a fresh Redis is back on the port, calls work again (the scripts
    are loaded anew), and a lease the new server never knew is lost, not unavailable."""
    queue = RedisQueue.from_url(private_redis.url, namespace="down")
    try:
        await queue.enqueue(make_job("a"))
        lease = await queue.claim("w", lease_s=60)
        assert lease is not None
        private_redis.stop()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: queue.enqueue(make_job("b")),
            lambda: queue.claim("w", lease_s=60, wait_s=2.0),
            lambda: queue.renew(lease, lease_s=60),
            lambda: queue.ack(lease),
            queue.depth,
        ]
        for call in calls:
            with pytest.raises(QueueUnavailableError, match="down"):
                await asyncio.wait_for(call(), timeout=2 + CONNECT_TIMEOUT_S)
        private_redis.start()
        assert await queue.enqueue(make_job("b"))
        again = await queue.claim("w", lease_s=60)
        assert again is not None and again.job.id == "b"
        await queue.ack(again)
        with pytest.raises(LeaseLostError) as lost:
            await queue.renew(lease, lease_s=60)
        assert lost.value.reason is LostBecause.UNKNOWN
    finally:
        await queue.close()


async def test_a_lease_held_over_a_redis_restart_finishes(private_redis: PrivateRedis) -> None:
    """A Redis restarted with its data, script cache empty, takes the holder's renew
    and ack as if it had never gone: the job finishes once and is not handed out again."""
    queue = RedisQueue.from_url(private_redis.url, namespace="restart")
    try:
        await queue.enqueue(make_job("a"))
        lease = await queue.claim("w", lease_s=60)
        assert lease is not None
        private_redis.stop(keep_data=True)
        with pytest.raises(QueueUnavailableError):
            await queue.renew(lease, lease_s=60)
        private_redis.start()
        lease = await queue.renew(lease, lease_s=60)
        assert await queue.claim("w2", lease_s=60) is None
        await queue.ack(lease)
        assert await queue.depth() == 0 and await queue.claim("w2", lease_s=60) is None
    finally:
        await queue.close()


async def test_a_frozen_redis_fails_a_waiting_claim_within_its_timeouts(
    private_redis: PrivateRedis,
) -> None:
    """A Redis that accepts connections but never answers (stopped with SIGSTOP) makes
    a claim fail with QueueUnavailableError after the client's timeouts, not hang."""
    queue = RedisQueue.from_url(private_redis.url, namespace="frozen")
    try:
        await queue.depth()  # connected before the freeze
        private_redis.freeze()
        try:
            bound_s = 1.0 + COMMAND_TIMEOUT_S + CONNECT_TIMEOUT_S
            with pytest.raises(QueueUnavailableError):
                await asyncio.wait_for(queue.claim("w", lease_s=60, wait_s=1.0), bound_s)
        finally:
            private_redis.thaw()
    finally:
        await queue.close()


async def test_lost_data_tells_a_flush_or_an_empty_restart_once(
    private_redis: PrivateRedis,
) -> None:
    """lost_data answers False on a fresh queue and while Redis keeps its data, True once
    after a FLUSHALL or a restart without data (it sets the epoch again), and True to
    another queue of the namespace that saw the epoch before it was set again."""
    first = RedisQueue.from_url(private_redis.url, namespace="epoch")
    second = RedisQueue.from_url(private_redis.url, namespace="epoch")
    client = Redis.from_url(private_redis.url)
    try:
        assert not await first.lost_data()
        assert not await second.lost_data()
        await first.enqueue(make_job("a"))
        assert not await first.lost_data()
        await client.flushall()
        assert await first.lost_data()
        assert not await first.lost_data()
        assert await second.lost_data()
        assert not await second.lost_data()
        private_redis.stop()
        private_redis.start()
        assert await first.lost_data()
        assert not await first.lost_data()
    finally:
        await client.aclose()
        await first.close()
        await second.close()


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
        RedisQueue(redis_client, namespace=redis_namespace, fake_now_ms=clocks[1].ms),
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
