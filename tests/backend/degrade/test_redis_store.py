"""What only the Redis level store does: its keys and TTLs, unreadable entries, errors,
sharing between processes; and the factory that picks a store by queue backend."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from backend.degrade import make_level_store
from backend.degrade.ladder import Level, LoadSample
from backend.degrade.memory import MemoryLevelStore
from backend.degrade.records import Cleared, HostLoad, Override
from backend.degrade.redis import RedisLevelStore
from backend.errors import BackendError
from config.settings import load_settings
from tests.backend.degrade.test_store_contract import LOAD


async def test_redis_keys_live_under_the_namespace_and_expire(
    redis_client: Redis, redis_namespace: str
) -> None:
    """The override has no TTL; the host keys expire a TTL after the last publish."""
    store = RedisLevelStore(redis_client, redis_namespace)
    await store.write_override(Override(Level.LIGHT, 1, 5))
    await store.publish("a", LOAD, ttl_s=15)
    prefix = f"{redis_namespace}:degrade:"
    assert store.key("hosts") == prefix + "hosts"
    assert await redis_client.pttl(prefix + "override") == -1
    for name in ("hosts", "expiry"):
        assert 0 < await redis_client.pttl(prefix + name) <= 15_000


async def test_redis_store_skips_unreadable_records(
    redis_client: Redis, redis_namespace: str
) -> None:
    """A malformed override reads as none and a malformed host entry is left out."""
    store = RedisLevelStore(redis_client, redis_namespace)
    await redis_client.set(store.key("override"), json.dumps({"level": "apocalyptic"}))
    await store.publish("good", LOAD, ttl_s=15)
    await store.publish("bad", LOAD, ttl_s=15)
    await redis_client.hset(store.key("hosts"), "bad", "{not json")
    assert await store.read_override() is None
    assert await store.hosts() == {"good": LOAD}


async def test_redis_failures_become_backend_errors() -> None:
    """A Redis that cannot be reached raises BackendError naming the store."""
    client = Redis.from_url("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(BackendError, match="degradation level store"):
            await RedisLevelStore(client, "nowhere").read_override()
    finally:
        await client.aclose()


async def test_the_factory_follows_the_queue_backend(redis_client: Redis) -> None:
    """Memory queue: memory store; Redis queue: a Redis store, which needs the client."""
    assert isinstance(make_level_store(load_settings().queue), MemoryLevelStore)
    redis_settings = load_settings(queue={"backend": "redis"})
    assert isinstance(make_level_store(redis_settings.queue, redis_client), RedisLevelStore)
    with pytest.raises(BackendError, match="no Redis client"):
        make_level_store(redis_settings.queue)


async def test_two_stores_on_one_namespace_see_the_same_values(
    redis_client: Redis, redis_namespace: str
) -> None:
    """What one process's store writes, another's on the same Redis and namespace reads;
    a store in another namespace sees none of it."""
    here = RedisLevelStore(redis_client, redis_namespace)
    there = RedisLevelStore(redis_client, redis_namespace)
    elsewhere = RedisLevelStore(redis_client, f"{redis_namespace}-other")
    pin = Override(Level.MEDIUM, 42, 1_000)
    await here.write_override(pin)
    await here.publish("a", LOAD, ttl_s=15)
    other = HostLoad(Level.NORMAL, LoadSample(1, 0.5, 0.25), 1)
    await there.publish("b", other, ttl_s=15)
    assert await there.read_override() == pin
    assert await here.hosts() == await there.hosts() == {"a": LOAD, "b": other}
    assert await there.seed_override(Override(Level.HEAVY, 7, 2_000)) == pin
    await there.write_override(Cleared(7, 3_000))
    assert await here.read_override() == Cleared(7, 3_000)
    assert await elsewhere.read_override() is None and await elsewhere.hosts() == {}
