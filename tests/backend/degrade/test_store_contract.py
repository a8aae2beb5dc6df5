"""The LevelStore contract; every store runs this same suite unchanged (Redis on the
real server). What only the Redis store does is in ``test_redis_store``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backend.degrade.base import LevelStore
from backend.degrade.ladder import Level, LoadSample
from backend.degrade.memory import MemoryLevelStore
from backend.degrade.records import Cleared, HostLoad, Override
from backend.degrade.redis import RedisLevelStore
from tests.fakes import FakeClock

LOAD = HostLoad(Level.LIGHT, LoadSample(queue_len=120, p95_wait_s=30.0, utilization=0.8), 2)


@pytest.fixture
def wall() -> FakeClock:
    """A wall clock at a realistic epoch, moved only by the test."""
    return FakeClock(start_ms=1_700_000_000_000)


def _redis_store(request: pytest.FixtureRequest, wall: FakeClock) -> LevelStore:
    """A store on the test Redis, in a namespace of this test alone."""
    client = request.getfixturevalue("redis_client")
    return RedisLevelStore(client, request.getfixturevalue("redis_namespace"), now_ms=wall.ms)


StoreFactory = Callable[[pytest.FixtureRequest, FakeClock], LevelStore]

IMPLEMENTATIONS: dict[str, StoreFactory] = {
    "memory": lambda request, wall: MemoryLevelStore(now_ms=wall.ms),
    "redis": _redis_store,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, wall: FakeClock) -> LevelStore:
    return IMPLEMENTATIONS[request.param](request, wall)


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


async def test_an_undo_restores_the_previous_record_only_over_its_own(
    store: LevelStore,
) -> None:
    """An undo puts the previous record back (or none) while the store still holds the
    written one, and leaves a record written since in place."""
    earlier, pin = Override(Level.LIGHT, 1, 10), Override(Level.HEAVY, 2, 20)
    await store.write_override(earlier)
    await store.write_override(pin)
    assert await store.undo_override(pin, earlier) is True
    assert await store.read_override() == earlier
    assert await store.undo_override(pin, None) is False
    assert await store.read_override() == earlier
    await store.write_override(pin)
    await store.write_override(Cleared(3, 30))
    assert await store.undo_override(pin, earlier) is False
    assert await store.read_override() == Cleared(3, 30)
    assert await store.undo_override(Cleared(3, 30), None) is True
    assert await store.read_override() is None


async def test_published_loads_round_trip_and_replace_the_last(store: LevelStore) -> None:
    """Each process's latest load is read back as published, keyed by its id."""
    other = HostLoad(Level.NORMAL, LoadSample(3, 0.5, 0.0), 0)
    await store.publish("a", other, ttl_s=15)
    await store.publish("b", other, ttl_s=15)
    await store.publish("a", LOAD, ttl_s=15)
    assert await store.hosts() == {"a": LOAD, "b": other}


async def test_an_entry_counts_until_its_ttl_and_republishing_extends_it(
    store: LevelStore, wall: FakeClock
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
    store: LevelStore, wall: FakeClock
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
