"""The degradation controller: the override persisted and restored, transitions logged
and sent to subscribers, and the override and automatic levels shared between hosts."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.degrade.base import LevelStore
from backend.degrade.controller import DegradeController
from backend.degrade.ladder import Level, Transition
from backend.degrade.memory import MemoryLevelStore
from backend.degrade.records import OVERRIDE_KEY, Cleared, HostLoad, Override
from backend.degrade.redis import RedisLevelStore
from backend.errors import BackendError
from config.settings import Settings, load_settings
from storage.db import Database
from storage.errors import StorageError
from tests.backend.degrade.test_ladder import PRESSURE, SHORT_QUEUE, STEADY
from tests.fakes import FakeClock
from tests.redis_server import PrivateRedis


def controller_for(
    settings: Settings,
    db: Database,
    clock: Callable[[], float],
    store: LevelStore,
    host_id: str | None = None,
) -> DegradeController:
    """A controller over the sections of ``settings`` it reads."""
    return DegradeController(
        settings.degrade, settings.scheduler.tiers, db, clock, store=store, host_id=host_id
    )


# -- the persisted override ----------------------------------------------------------------


async def test_override_survives_a_new_controller_over_the_same_database(tmp_path: Path) -> None:
    """A persisted override is restored by the next run's controller; clearing removes it."""
    settings = load_settings()
    clock = FakeClock(start_ms=0)
    async with Database.open(tmp_path / "x.db") as db:
        first = controller_for(settings, db, clock.monotonic, MemoryLevelStore())
        await first.set_override(Level.HEAVY, 42)
    async with Database.open(tmp_path / "x.db") as db:
        second = controller_for(settings, db, clock.monotonic, MemoryLevelStore())
        assert (second.level, second.override) == (Level.NORMAL, None)
        await second.load()
        assert second.level is Level.HEAVY
        assert second.override is not None and second.override.actor_id == 42
        second.observe(SHORT_QUEUE)
        clock.now_s = 5000
        assert second.observe(SHORT_QUEUE) is None
        assert second.restrictions.level is Level.HEAVY
        cleared = await second.clear_override(7)
        assert cleared is not None and cleared.to_level is Level.NORMAL
    async with Database.open(tmp_path / "x.db") as db:
        third = controller_for(settings, db, clock.monotonic, MemoryLevelStore())
        await third.load()
        assert third.level is Level.NORMAL and third.override is None


async def test_a_corrupt_persisted_override_is_ignored(tmp_path: Path) -> None:
    """An unreadable stored override leaves automatic control in place instead of failing."""
    async with Database.open(tmp_path / "x.db") as db:
        await db.state.set("degrade_override", {"level": "apocalyptic", "actor": 1, "at_ms": 0})
        controller = controller_for(
            load_settings(), db, FakeClock(start_ms=0).monotonic, MemoryLevelStore()
        )
        await controller.load()
        assert controller.level is Level.NORMAL and controller.override is None


# -- controller ----------------------------------------------------------------------------


async def test_transitions_are_logged_kept_and_sent_to_subscribers(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """Each transition is logged as degrade_level_changed, kept in history and sent out."""
    settings = load_settings(degrade={"escalate_after_s": 10})
    clock = FakeClock(start_ms=0)
    seen: list[Transition] = []
    async with Database.open(tmp_path / "x.db") as db:
        controller = controller_for(settings, db, clock.monotonic, MemoryLevelStore())
        controller.subscribe(seen.append)
        controller.observe(PRESSURE)
        clock.now_s = 10
        transition = controller.observe(PRESSURE)
    changed = [entry for entry in logs if entry["event"] == "degrade_level_changed"]
    assert transition is not None and seen == [transition]
    assert controller.history == (transition,) and controller.level is Level.LIGHT
    assert changed == [
        {
            "event": "degrade_level_changed",
            "log_level": "info",
            "from": "normal",
            "to": "light",
            "reason": "queue length 130 > 100 for 10 s",
        }
    ]
    assert controller.restrictions.steps_factor == 0.6


async def test_a_failing_subscriber_does_not_stop_the_others(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """A subscriber that raises is logged; later subscribers still hear of the transition."""
    seen: list[Transition] = []

    def broken(_: Transition) -> None:
        raise RuntimeError("boom")

    async with Database.open(tmp_path / "x.db") as db:
        controller = controller_for(
            load_settings(), db, FakeClock(start_ms=0).monotonic, MemoryLevelStore()
        )
        controller.subscribe(broken)
        controller.subscribe(seen.append)
        await controller.set_override(Level.LIGHT, 42)
    assert len(seen) == 1 and seen[0].to_level is Level.LIGHT
    assert any(entry["event"] == "degrade_subscriber_failed" for entry in logs)


async def test_unsubscribed_callbacks_hear_nothing(tmp_path: Path) -> None:
    """After unsubscribing, a callback is no longer called."""
    seen: list[Transition] = []
    async with Database.open(tmp_path / "x.db") as db:
        controller = controller_for(
            load_settings(), db, FakeClock(start_ms=0).monotonic, MemoryLevelStore()
        )
        unsubscribe = controller.subscribe(seen.append)
        unsubscribe()
        await controller.set_override(Level.HEAVY, 42)
    assert seen == [] and controller.level is Level.HEAVY


# -- sharing between processes -------------------------------------------------------------


async def test_an_override_set_on_one_host_applies_on_another(
    tmp_path: Path,
    redis_client: Redis,
    redis_namespace: str,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A pin and its clear reach a second controller on the same Redis at its next pull:
    its subscribers hear both, they are logged, and its own database keeps a copy."""
    settings, clock = load_settings(), FakeClock(start_ms=0)
    seen: list[Transition] = []
    store = RedisLevelStore(redis_client, redis_namespace)
    async with Database.open(tmp_path / "a.db") as db_a, Database.open(tmp_path / "b.db") as db_b:
        first = controller_for(settings, db_a, clock.monotonic, store, "a")
        second = controller_for(settings, db_b, clock.monotonic, store, "b")
        await first.load()
        await second.load()
        second.subscribe(seen.append)
        await first.set_override(Level.HEAVY, 42)
        assert second.level is Level.NORMAL
        await second.pull()
        assert second.level is Level.HEAVY and second.override == first.override
        assert (await db_b.state.get("degrade_override"))["level"] == "heavy"
        await first.clear_override(7)
        await second.pull()
        assert second.level is Level.NORMAL and second.override is None
        assert await db_b.state.get("degrade_override") is None
    assert [(t.to_level, t.reason) for t in seen] == [
        (Level.HEAVY, "admin override by 42"),
        (Level.NORMAL, "override cleared by 7"),
    ]
    changed = [entry for entry in logs if entry["event"] == "degrade_level_changed"]
    assert len(changed) == 4  # two on each host


async def test_start_up_prefers_the_shared_override_over_the_local_copy(
    tmp_path: Path, redis_client: Redis, redis_namespace: str
) -> None:
    """A clear recorded in Redis beats this host's stale pin in SQLite, which it removes."""
    store = RedisLevelStore(redis_client, redis_namespace)
    await store.write_override(Cleared(7, 2_000))
    async with Database.open(tmp_path / "x.db") as db:
        await db.state.set("degrade_override", Override(Level.HEAVY, 42, 1_000).to_dict())
        controller = controller_for(
            load_settings(), db, FakeClock(start_ms=0).monotonic, store, "a"
        )
        await controller.load()
        assert controller.level is Level.NORMAL and controller.override is None
        assert await db.state.get("degrade_override") is None


async def test_start_up_falls_back_to_sqlite_and_seeds_redis(
    tmp_path: Path, redis_client: Redis, redis_namespace: str
) -> None:
    """With nothing in Redis the SQLite pin is restored and shared for the other hosts."""
    settings, clock = load_settings(), FakeClock(start_ms=0)
    store = RedisLevelStore(redis_client, redis_namespace)
    async with Database.open(tmp_path / "a.db") as db_a, Database.open(tmp_path / "b.db") as db_b:
        await controller_for(settings, db_a, clock.monotonic, store, "a").set_override(
            Level.MEDIUM, 42
        )
        await redis_client.delete(store.key("override"))
        restarted = controller_for(settings, db_a, clock.monotonic, store, "a")
        await restarted.load()
        other = controller_for(settings, db_b, clock.monotonic, store, "b")
        await other.load()
    assert restarted.level is Level.MEDIUM and other.level is Level.MEDIUM
    assert await store.read_override() == restarted.override


async def test_start_up_without_redis_keeps_the_sqlite_override(tmp_path: Path) -> None:
    """An unreachable Redis at start-up leaves the local pin in force instead of failing."""
    client = Redis.from_url("redis://127.0.0.1:1/0")
    try:
        async with Database.open(tmp_path / "x.db") as db:
            await db.state.set("degrade_override", Override(Level.LIGHT, 42, 1_000).to_dict())
            controller = controller_for(
                load_settings(),
                db,
                FakeClock(start_ms=0).monotonic,
                RedisLevelStore(client, "x"),
                "a",
            )
            await controller.load()
            assert controller.level is Level.LIGHT
    finally:
        await client.aclose()


async def test_a_lost_shared_override_is_put_back(
    tmp_path: Path, redis_client: Redis, redis_namespace: str
) -> None:
    """If Redis loses the pin (flushed), the next pull of a host that holds it restores it."""
    store = RedisLevelStore(redis_client, redis_namespace)
    async with Database.open(tmp_path / "x.db") as db:
        controller = controller_for(
            load_settings(), db, FakeClock(start_ms=0).monotonic, store, "a"
        )
        await controller.set_override(Level.HEAVY, 42)
        await redis_client.delete(store.key("override"))
        await controller.pull()
        assert await store.read_override() == controller.override
        assert controller.level is Level.HEAVY


async def test_a_change_the_store_cannot_take_applies_nothing_anywhere(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """With Redis stopped, a failed set or clear leaves this process, SQLite and Redis
    as they were, so no later start copies the failed change to any host."""
    settings, clock = load_settings(), FakeClock(start_ms=0).monotonic
    async with Database.open(tmp_path / "x.db") as db:
        async with Redis.from_url(private_redis.url) as client:
            first = controller_for(settings, db, clock, RedisLevelStore(client, "x"), "a")
            await first.load()
            private_redis.stop(keep_data=True)
            with pytest.raises(BackendError, match="degradation level store"):
                await first.set_override(Level.HEAVY, 42)
            assert (first.level, first.override) == (Level.NORMAL, None)
            assert await db.state.get(OVERRIDE_KEY) is None
        private_redis.start()
        async with Redis.from_url(private_redis.url) as client:
            store = RedisLevelStore(client, "x")
            assert await store.read_override() is None
            second = controller_for(settings, db, clock, store, "b")
            await second.load()
            assert (second.level, second.override) == (Level.NORMAL, None)
            await second.set_override(Level.MEDIUM, 7)
            pinned = second.override
        private_redis.stop(keep_data=True)
        with pytest.raises(BackendError, match="degradation level store"):
            await second.clear_override(8)
        assert second.override == pinned
        private_redis.start()
        async with Redis.from_url(private_redis.url) as client:
            store = RedisLevelStore(client, "x")
            assert pinned is not None and await store.read_override() == pinned
            assert await db.state.get(OVERRIDE_KEY) == pinned.to_dict()
            third = controller_for(settings, db, clock, store, "c")
            await third.load()
            assert third.override == pinned


async def test_a_failed_database_write_puts_the_shared_record_back(
    tmp_path: Path,
    redis_client: Redis,
    redis_namespace: str,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """When SQLite refuses the write after Redis took it, Redis gets its previous record
    back: the other hosts never adopt a change that was reported as failed."""
    store = RedisLevelStore(redis_client, redis_namespace)
    async with Database.open(tmp_path / "x.db") as db:
        controller = controller_for(
            load_settings(), db, FakeClock(start_ms=0).monotonic, store, "a"
        )
        await controller.set_override(Level.LIGHT, 1)
        earlier = controller.override
        async with db.transaction() as conn:
            for change in ("INSERT", "UPDATE", "DELETE"):
                await conn.execute(
                    f"CREATE TRIGGER refuse_{change.lower()} BEFORE {change} ON service_state"
                    " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                )
        with pytest.raises((sqlite3.DatabaseError, StorageError), match="disk full"):
            await controller.set_override(Level.HEAVY, 2)
        assert await store.read_override() == earlier
        with pytest.raises((sqlite3.DatabaseError, StorageError), match="disk full"):
            await controller.clear_override(3)
        assert await store.read_override() == earlier
        assert controller.override == earlier
        assert earlier is not None and await db.state.get(OVERRIDE_KEY) == earlier.to_dict()
    undone = [entry for entry in logs if entry["event"] == "degrade_override_undone"]
    assert len(undone) == 2


async def test_the_automatic_level_is_the_highest_of_the_live_hosts(
    tmp_path: Path, redis_client: Redis, redis_namespace: str
) -> None:
    """Effective level = max(own automatic level, live hosts' published ones); a host
    whose entry expired stops counting, and each change reaches subscribers."""
    settings = load_settings(degrade={"escalate_after_s": 10})
    clock, wall = FakeClock(start_ms=0), FakeClock(start_ms=1_700_000_000_000)
    seen: list[Transition] = []
    store = RedisLevelStore(redis_client, redis_namespace, now_ms=wall.ms)
    async with Database.open(tmp_path / "x.db") as db:
        here = controller_for(settings, db, clock.monotonic, store, "here")
        here.subscribe(seen.append)
        here.observe(PRESSURE)
        clock.now_s = 10
        here.observe(PRESSURE)
        await here.push(PRESSURE, devices=1)
        await store.publish("medium-host", HostLoad(Level.MEDIUM, STEADY, 1), ttl_s=15)
        await store.publish("heavy-host", HostLoad(Level.HEAVY, PRESSURE, 1), ttl_s=5)
        await here.pull()
        assert (here.auto_level, here.peer_level, here.level) == (
            Level.LIGHT,
            Level.HEAVY,
            Level.HEAVY,
        )
        wall.now_ms += 5_000
        await here.pull()
        assert here.level is Level.MEDIUM
        wall.now_ms += 10_000
        await here.pull()
        assert (here.peer_level, here.level) == (Level.NORMAL, Level.LIGHT)
        assert here.restrictions.level is Level.LIGHT
    assert [(t.to_level, t.reason) for t in seen] == [
        (Level.LIGHT, "queue length 130 > 100 for 10 s"),
        (Level.HEAVY, "host heavy-host at heavy"),
        (Level.MEDIUM, "other hosts at medium or below"),
        (Level.LIGHT, "other hosts at normal or below"),
    ]


async def test_a_host_publishes_its_own_level_not_the_shared_one(tmp_path: Path) -> None:
    """A host held up by another publishes its own automatic level, so the two never
    keep each other up after the busy one relaxed."""
    store, settings = MemoryLevelStore(), load_settings()
    async with Database.open(tmp_path / "x.db") as db:
        here = controller_for(settings, db, FakeClock(start_ms=0).monotonic, store, "here")
        await store.publish("busy", HostLoad(Level.HEAVY, PRESSURE, 1), ttl_s=15)
        await here.pull()
        await here.push(SHORT_QUEUE, devices=1)
        assert here.level is Level.HEAVY
        assert (await store.hosts())["here"].auto_level is Level.NORMAL


async def test_with_auto_off_other_hosts_levels_are_ignored(tmp_path: Path) -> None:
    """auto = false leaves the level to admins, whatever other hosts publish."""
    store = MemoryLevelStore()
    await store.publish("busy", HostLoad(Level.HEAVY, PRESSURE, 1), ttl_s=15)
    async with Database.open(tmp_path / "x.db") as db:
        here = controller_for(
            load_settings(degrade={"auto": False}),
            db,
            FakeClock(start_ms=0).monotonic,
            store,
            "here",
        )
        await here.pull()
        assert here.level is Level.NORMAL
