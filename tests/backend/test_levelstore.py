"""The LevelStore contract, run unchanged against memory and the real Redis; then what
only the Redis store does (keys, TTLs, unreadable entries, errors)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from backend.degrade import make_level_store
from backend.degrade.base import LevelStore
from backend.degrade.ladder import Level, LoadSample
from backend.degrade.memory import MemoryLevelStore
from backend.degrade.records import Cleared, HostLoad, Override
from backend.degrade.redis import RedisLevelStore
from backend.errors import BackendError
from config.settings import load_settings

LOAD = HostLoad(Level.LIGHT, LoadSample(queue_len=120, p95_wait_s=30.0, utilization=0.8), 2)


class WallClock:
    """Wall-clock milliseconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, wall: WallClock, redis_client: Redis, redis_namespace: str
) -> AsyncIterator[LevelStore]:
    if request.param == "memory":
        yield MemoryLevelStore(now_ms=wall)
    else:
        yield RedisLevelStore(redis_client, redis_namespace, now_ms=wall)


# -- contract ------------------------------------------------------------------------------


async def test_nothing_written_reads_as_no_record(store: LevelStore) -> None:
    """A fresh store has no override record and no live process."""
    assert isinstance(store, LevelStore)
    assert await store.read_override() is None and await store.hosts() == {}


async def test_the_last_override_record_wins(store: LevelStore) -> None:
    """Pins and clears round-trip exactly; each write replaces the one before."""
    pin = Override(Level.HEAVY, 42, 1000)
    await store.write_override(pin)
    assert await store.read_override() == pin
    await store.write_override(Cleared(7, 2000))
    assert await store.read_override() == Cleared(7, 2000)


async def test_seeding_writes_only_into_an_empty_store(store: LevelStore) -> None:
    """A seed fills an empty store; once any record (even a clear) exists it stays put."""
    first = Override(Level.MEDIUM, 1, 10)
    assert await store.seed_override(first) == first
    assert await store.seed_override(Override(Level.LIGHT, 2, 20)) == first
    await store.write_override(Cleared(3, 30))
    assert await store.seed_override(Override(Level.HEAVY, 4, 40)) == Cleared(3, 30)
    assert await store.read_override() == Cleared(3, 30)


async def test_published_loads_round_trip_and_replace_the_last(store: LevelStore) -> None:
    """Each process's latest load is read back as published, keyed by its id."""
    other = HostLoad(Level.NORMAL, LoadSample(3, 0.5, 0.0), 0)
    await store.publish("a", other, ttl_s=15)
    await store.publish("b", other, ttl_s=15)
    await store.publish("a", LOAD, ttl_s=15)
    assert await store.hosts() == {"a": LOAD, "b": other}


async def test_an_entry_counts_until_its_ttl_and_republishing_extends_it(
    store: LevelStore, wall: WallClock
) -> None:
    """An entry is live for ttl_s after its last publish and gone from then on."""
    await store.publish("a", LOAD, ttl_s=15)
    await store.publish("b", LOAD, ttl_s=5)
    wall.now_ms += 4_999
    assert set(await store.hosts()) == {"a", "b"}
    wall.now_ms += 1
    assert set(await store.hosts()) == {"a"}
    await store.publish("a", LOAD, ttl_s=15)
    wall.now_ms += 14_000
    assert set(await store.hosts()) == {"a"}
    wall.now_ms += 1_000
    assert await store.hosts() == {}


async def test_an_expired_entry_stays_gone_after_others_publish(
    store: LevelStore, wall: WallClock
) -> None:
    """Another process publishing does not bring an expired entry back."""
    await store.publish("dead", LOAD, ttl_s=1)
    wall.now_ms += 2_000
    await store.publish("alive", LOAD, ttl_s=1)
    # Back to before its expiry: only the prune at that publish explains its absence.
    wall.now_ms -= 1_500
    assert set(await store.hosts()) == {"alive"}


async def test_withdraw_drops_only_that_process(store: LevelStore) -> None:
    """A withdrawn process stops counting at once; withdrawing twice is harmless."""
    await store.publish("a", LOAD, ttl_s=15)
    await store.publish("b", LOAD, ttl_s=15)
    await store.withdraw("a")
    await store.withdraw("a")
    assert set(await store.hosts()) == {"b"}


async def test_a_ttl_must_be_positive(store: LevelStore) -> None:
    """A zero TTL is a caller's bug, refused rather than publishing a dead entry."""
    with pytest.raises(ValueError, match="ttl_s"):
        await store.publish("a", LOAD, ttl_s=0)


# -- Redis only ----------------------------------------------------------------------------


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
