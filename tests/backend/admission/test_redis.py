"""What only the Redis buckets do: keys and their TTLs, nothing written on a refusal,
sharing between processes, errors; and the factory that picks a store by queue backend."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from backend.admission import make_buckets
from backend.admission.base import Scope
from backend.admission.memory import MemoryBuckets
from backend.admission.redis import RedisBuckets
from backend.errors import BackendError
from config.settings import Settings, load_settings
from tests.backend.admission.test_buckets_contract import charge
from tests.backend.admission.test_limits import admission_for, admit_until_refused
from tests.fakes import FakeClock


async def test_redis_keys_carry_a_ttl_of_a_full_refill(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """Each bucket key expires once it would have refilled, plus a margin."""
    store = RedisBuckets(redis_client, redis_namespace, now_ms=clock.ms)
    await admission_for(store).admit(user_id=7, tier="free", guild_id=9, queued_for_user=0)
    keys = sorted([key.decode() async for key in redis_client.scan_iter(f"{redis_namespace}:*")])
    assert keys == [
        f"{redis_namespace}:rl:{scope}" for scope in ("global:all", "guild:9", "user:7")
    ]
    ttls_ms = [await redis_client.pttl(key) for key in keys]
    assert all(60_000 < ttl_ms <= 61_000 for ttl_ms in ttls_ms), ttls_ms


async def test_redis_refusal_writes_nothing(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """A refused take creates no key for the buckets it did not charge."""
    store = RedisBuckets(redis_client, redis_namespace, now_ms=clock.ms)
    world = charge(Scope.GLOBAL, "all", capacity=1)
    assert await store.take([world]) is None
    assert await store.take([charge(Scope.USER, "7", capacity=5), world]) is not None
    assert not await redis_client.exists(f"{redis_namespace}:rl:user:7")


async def test_redis_buckets_are_shared_between_stores(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """Two processes' stores on one Redis and namespace enforce one limit together."""
    first = admission_for(RedisBuckets(redis_client, redis_namespace, now_ms=clock.ms))
    second = admission_for(RedisBuckets(redis_client, redis_namespace, now_ms=clock.ms))
    for _ in range(4):
        await first.admit(user_id=7, tier="free", guild_id=None, queued_for_user=0)
    admitted, _ = await admit_until_refused(second)
    assert admitted == 6


async def test_redis_failure_is_a_backend_error(clock: FakeClock) -> None:
    """An unreachable Redis surfaces as a BackendError from the limiter."""
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        with pytest.raises(BackendError, match="rate limiter: Redis failed"):
            await RedisBuckets(client, "nowhere", now_ms=clock.ms).take(
                [charge(Scope.USER, "7", capacity=1)]
            )
    finally:
        await client.aclose()


async def test_make_buckets_follows_the_queue_backend(redis_client: Redis) -> None:
    """Memory by default; Redis buckets in the queue's namespace when the queue is Redis."""
    assert isinstance(make_buckets(Settings().queue), MemoryBuckets)
    on_redis = load_settings(queue={"backend": "redis", "namespace": "shop"})
    store = make_buckets(on_redis.queue, redis_client)
    assert isinstance(store, RedisBuckets)
    assert store.key(charge(Scope.USER, "7", capacity=1)) == "shop:rl:user:7"
    with pytest.raises(BackendError, match="no Redis client"):
        make_buckets(on_redis.queue)
