"""The degradation ladder: escalation, relaxation, hysteresis, override, restrictions, and
the controller sharing the override and the automatic level between hosts."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.degrade.base import LevelStore
from backend.degrade.controller import DegradeController
from backend.degrade.ladder import Ladder, Level, LoadSample, Transition, restrictions
from backend.degrade.memory import MemoryLevelStore
from backend.degrade.records import Cleared, HostLoad, Override
from backend.degrade.redis import RedisLevelStore
from backend.models import Lane
from config.settings import DegradeSettings, Settings, load_settings
from storage.db import Database

PRESSURE = LoadSample(queue_len=130, p95_wait_s=10.0, utilization=0.7)
# Between the relax and escalate thresholds on every measure: the level must hold.
STEADY = LoadSample(queue_len=50, p95_wait_s=10.0, utilization=0.7)
SHORT_QUEUE = LoadSample(queue_len=5, p95_wait_s=1.0, utilization=0.7)


def _degrade(**overrides: Any) -> DegradeSettings:
    return load_settings(degrade=overrides).degrade


def _feed(
    ladder: Ladder, sample: LoadSample, start_s: float, end_s: float, every_s: float = 10
) -> list[Transition]:
    """Observe ``sample`` every ``every_s`` from start to end (both included)."""
    transitions: list[Transition] = []
    now_s = start_s
    while now_s <= end_s:
        transition = ladder.observe(sample, now_s)
        if transition is not None:
            transitions.append(transition)
        now_s += every_s
    return transitions


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


# -- escalation ----------------------------------------------------------------------------


def test_no_escalation_before_the_duration() -> None:
    """A long queue held for less than escalate_after_s leaves the level at normal."""
    ladder = Ladder(_degrade())
    transitions = _feed(ladder, PRESSURE, 0, 299, every_s=1)
    assert transitions == [] and ladder.level is Level.NORMAL


def test_escalation_after_exactly_the_duration() -> None:
    """At escalate_after_s of a long queue the ladder goes up one rung, and says why."""
    ladder = Ladder(_degrade())
    ladder.observe(PRESSURE, 0)
    transition = ladder.observe(PRESSURE, 300)
    assert transition is not None
    assert (transition.from_level, transition.to_level) == (Level.NORMAL, Level.LIGHT)
    assert transition.reason == "queue length 130 > 100 for 300 s" and transition.at_s == 300


def test_one_rung_per_duration_of_sustained_pressure() -> None:
    """Sustained pressure climbs normal, light, medium, heavy: one rung per duration."""
    ladder = Ladder(_degrade())
    transitions = _feed(ladder, PRESSURE, 0, 1500)
    assert [(t.to_level, t.at_s) for t in transitions] == [
        (Level.LIGHT, 300),
        (Level.MEDIUM, 600),
        (Level.HEAVY, 900),
    ]
    assert ladder.level is Level.HEAVY


@pytest.mark.parametrize(
    ("utilization", "p95_wait_s", "escalates"),
    [(0.95, 75.0, True), (0.95, 30.0, False), (0.8, 75.0, False)],
)
def test_utilization_and_p95_together_escalate(
    utilization: float, p95_wait_s: float, escalates: bool
) -> None:
    """Busy devices escalate with a short queue only when the p95 wait is also too long."""
    ladder = Ladder(_degrade())
    sample = LoadSample(queue_len=50, p95_wait_s=p95_wait_s, utilization=utilization)
    transitions = _feed(ladder, sample, 0, 300)
    assert (ladder.level is Level.LIGHT) == escalates
    assert all("utilization 0.95 > 0.9 and p95 wait 75 s > 60 s" in t.reason for t in transitions)


def test_a_break_in_pressure_restarts_the_timer() -> None:
    """One calm sample resets the pressure timer: the full duration counts again after it."""
    ladder = Ladder(_degrade())
    _feed(ladder, PRESSURE, 0, 240)
    ladder.observe(STEADY, 250)
    assert _feed(ladder, PRESSURE, 260, 550) == [] and ladder.level is Level.NORMAL
    transition = ladder.observe(PRESSURE, 560)
    assert transition is not None and transition.to_level is Level.LIGHT


def test_auto_off_never_moves_the_level() -> None:
    """With auto off, sustained pressure leaves the level where it is."""
    ladder = Ladder(_degrade(auto=False))
    assert _feed(ladder, PRESSURE, 0, 3000) == [] and ladder.level is Level.NORMAL


# -- relaxation and hysteresis -----------------------------------------------------------------


def test_relaxation_needs_a_short_queue_for_the_duration_one_rung_at_a_time() -> None:
    """A short queue relaxes one rung per relax_after_s, down to normal and no further."""
    ladder = Ladder(_degrade(), level=Level.HEAVY)
    assert _feed(ladder, SHORT_QUEUE, 0, 899) == []
    transitions = _feed(ladder, SHORT_QUEUE, 900, 4000)
    assert [(t.to_level, t.at_s) for t in transitions] == [
        (Level.MEDIUM, 900),
        (Level.LIGHT, 1800),
        (Level.NORMAL, 2700),
    ]
    assert transitions[0].reason == "queue length 5 < 20 for 900 s"


def test_low_utilization_relaxes_after_its_own_duration() -> None:
    """Idle devices with a middling queue relax after relax_utilization_after_s, not sooner."""
    ladder = Ladder(_degrade(), level=Level.MEDIUM)
    idle = LoadSample(queue_len=50, p95_wait_s=1.0, utilization=0.3)
    assert _feed(ladder, idle, 0, 1790) == []
    transition = ladder.observe(idle, 1800)
    assert transition is not None and transition.to_level is Level.LIGHT
    assert transition.reason == "utilization 0.30 < 0.5 for 1800 s"


def test_between_the_thresholds_the_level_holds() -> None:
    """Hysteresis: queue length 50 neither escalates nor relaxes, however long it lasts."""
    ladder = Ladder(_degrade(), level=Level.MEDIUM)
    assert _feed(ladder, STEADY, 0, 10_000) == [] and ladder.level is Level.MEDIUM


@pytest.mark.parametrize(
    "sample",
    [
        LoadSample(queue_len=500, p95_wait_s=300.0, utilization=0.1),
        LoadSample(queue_len=5, p95_wait_s=75.0, utilization=0.95),
    ],
    ids=["idle-devices-long-queue", "short-queue-hot-devices"],
)
def test_no_relaxation_under_pressure(sample: LoadSample) -> None:
    """A relax signal does not count while the other measure shows pressure."""
    ladder = Ladder(_degrade(), level=Level.HEAVY)
    assert _feed(ladder, sample, 0, 4000) == [] and ladder.level is Level.HEAVY


# -- override ------------------------------------------------------------------------------


def test_override_pins_the_level_and_clearing_resumes_automatic_control() -> None:
    """An override holds against load; cleared, the automatic level takes over and moves."""
    ladder = Ladder(_degrade())
    pinned = ladder.set_override(Level.NORMAL, 0, 42)
    assert pinned is None
    assert _feed(ladder, PRESSURE, 0, 1000) == []
    assert ladder.level is Level.NORMAL and ladder.auto_level is Level.HEAVY
    cleared = ladder.clear_override(1000, 42)
    assert cleared is not None and cleared.to_level is Level.HEAVY
    assert cleared.reason == "override cleared by 42"
    relaxed = _feed(ladder, SHORT_QUEUE, 1010, 1910)
    assert [t.to_level for t in relaxed] == [Level.MEDIUM]


def test_override_applies_with_auto_off() -> None:
    """With auto off the admin can still set a level, and clearing returns to normal."""
    ladder = Ladder(_degrade(auto=False))
    transition = ladder.set_override(Level.MEDIUM, 5, 42)
    assert transition is not None and transition.reason == "admin override by 42"
    assert (ladder.level, ladder.override) == (Level.MEDIUM, Level.MEDIUM)
    ladder.clear_override(6, 42)
    assert ladder.level is Level.NORMAL


async def test_override_survives_a_new_controller_over_the_same_database(tmp_path: Path) -> None:
    """A persisted override is restored by the next run's controller; clearing removes it."""
    settings = load_settings()
    clock = FakeClock()
    async with Database.open(tmp_path / "x.db") as db:
        first = DegradeController(settings, db, clock, store=MemoryLevelStore())
        await first.set_override(Level.HEAVY, 42)
    async with Database.open(tmp_path / "x.db") as db:
        second = DegradeController(settings, db, clock, store=MemoryLevelStore())
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
        third = DegradeController(settings, db, clock, store=MemoryLevelStore())
        await third.load()
        assert third.level is Level.NORMAL and third.override is None


async def test_a_corrupt_persisted_override_is_ignored(tmp_path: Path) -> None:
    """An unreadable stored override leaves automatic control in place instead of failing."""
    async with Database.open(tmp_path / "x.db") as db:
        await db.state.set("degrade_override", {"level": "apocalyptic", "actor": 1, "at_ms": 0})
        controller = DegradeController(load_settings(), db, FakeClock(), store=MemoryLevelStore())
        await controller.load()
        assert controller.level is Level.NORMAL and controller.override is None


# -- restrictions --------------------------------------------------------------------------


def test_normal_and_light_allow_everything() -> None:
    """Normal and light pause no tier and no lane."""
    settings = load_settings()
    for level in (Level.NORMAL, Level.LIGHT):
        allow = restrictions(level, settings).claim_filter
        assert all(allow.allows(lane, tier) for lane in Lane for tier in settings.scheduler.tiers)


def test_medium_pauses_unpaid_tiers_only() -> None:
    """Medium excludes 'free' but not 'basic', 'pro' or 'admin', in every lane."""
    allow = restrictions(Level.MEDIUM, load_settings()).claim_filter
    assert allow.exclude_tiers == frozenset({"free"})
    assert all(allow.allows(lane, tier) for lane in Lane for tier in ("basic", "pro", "admin"))


def test_heavy_allows_only_paid_realtime_work() -> None:
    """Heavy lets only the realtime lane of paid tiers start."""
    allow = restrictions(Level.HEAVY, load_settings()).claim_filter
    assert allow.lanes == frozenset({Lane.REALTIME})
    assert allow.allows(Lane.REALTIME, "pro") and not allow.allows(Lane.BATCH, "pro")
    assert not allow.allows(Lane.REALTIME, "free")


def test_steps_scale_from_light_upwards_and_never_below_one() -> None:
    """Light and above run 0.6 of the steps (30 -> 18), at least one; normal runs them all."""
    settings = load_settings()
    assert restrictions(Level.NORMAL, settings).apply_steps(30) == 30
    for level in (Level.LIGHT, Level.MEDIUM, Level.HEAVY):
        scaled = restrictions(level, settings)
        assert scaled.steps_factor == 0.6
        assert scaled.apply_steps(30) == 18 and scaled.apply_steps(1) == 1


def test_a_small_steps_factor_still_runs_one_step() -> None:
    """However small the factor, a degraded request runs at least one step."""
    scaled = restrictions(Level.LIGHT, load_settings(degrade={"light_steps_factor": 0.1}))
    assert scaled.apply_steps(3) == 1 and scaled.apply_steps(30) == 3


def test_tiers_marked_paid_in_settings_decide_what_medium_pauses() -> None:
    """A tier configured unpaid is paused at medium, whatever its name."""
    settings = load_settings(
        scheduler={
            "tiers": {"trial": {"weight": 1, "rate_per_min": 1, "max_running": 1, "max_queued": 1}}
        }
    )
    allow = restrictions(Level.MEDIUM, settings).claim_filter
    assert "trial" in allow.exclude_tiers and "pro" not in allow.exclude_tiers


# -- controller ----------------------------------------------------------------------------


async def test_transitions_are_logged_kept_and_sent_to_subscribers(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """Each transition is logged as degrade_level_changed, kept in history and sent out."""
    settings = load_settings(degrade={"escalate_after_s": 10})
    clock = FakeClock()
    seen: list[Transition] = []
    async with Database.open(tmp_path / "x.db") as db:
        controller = DegradeController(settings, db, clock, store=MemoryLevelStore())
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
        controller = DegradeController(load_settings(), db, FakeClock(), store=MemoryLevelStore())
        controller.subscribe(broken)
        controller.subscribe(seen.append)
        await controller.set_override(Level.LIGHT, 42)
    assert len(seen) == 1 and seen[0].to_level is Level.LIGHT
    assert any(entry["event"] == "degrade_subscriber_failed" for entry in logs)


async def test_unsubscribed_callbacks_hear_nothing(tmp_path: Path) -> None:
    """After unsubscribing, a callback is no longer called."""
    seen: list[Transition] = []
    async with Database.open(tmp_path / "x.db") as db:
        controller = DegradeController(load_settings(), db, FakeClock(), store=MemoryLevelStore())
        unsubscribe = controller.subscribe(seen.append)
        unsubscribe()
        await controller.set_override(Level.HEAVY, 42)
    assert seen == [] and controller.level is Level.HEAVY


# -- sharing between processes -------------------------------------------------------------


class WallClock:
    """Wall-clock milliseconds for the shared store's expiry, moved by hand."""

    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


def _shared(
    settings: Settings, db: Database, clock: FakeClock, store: LevelStore, host_id: str
) -> DegradeController:
    return DegradeController(settings, db, clock, store=store, host_id=host_id)


async def test_an_override_set_on_one_host_applies_on_another(
    tmp_path: Path,
    redis_client: Redis,
    redis_namespace: str,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A pin and its clear reach a second controller on the same Redis at its next pull:
    its subscribers hear both, they are logged, and its own database keeps a copy."""
    settings, clock = load_settings(), FakeClock()
    seen: list[Transition] = []
    store = RedisLevelStore(redis_client, redis_namespace)
    async with Database.open(tmp_path / "a.db") as db_a, Database.open(tmp_path / "b.db") as db_b:
        first = _shared(settings, db_a, clock, store, "a")
        second = _shared(settings, db_b, clock, store, "b")
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
        controller = _shared(load_settings(), db, FakeClock(), store, "a")
        await controller.load()
        assert controller.level is Level.NORMAL and controller.override is None
        assert await db.state.get("degrade_override") is None


async def test_start_up_falls_back_to_sqlite_and_seeds_redis(
    tmp_path: Path, redis_client: Redis, redis_namespace: str
) -> None:
    """With nothing in Redis the SQLite pin is restored and shared for the other hosts."""
    settings, clock = load_settings(), FakeClock()
    store = RedisLevelStore(redis_client, redis_namespace)
    async with Database.open(tmp_path / "a.db") as db_a, Database.open(tmp_path / "b.db") as db_b:
        await _shared(settings, db_a, clock, store, "a").set_override(Level.MEDIUM, 42)
        await redis_client.delete(store.key("override"))
        restarted = _shared(settings, db_a, clock, store, "a")
        await restarted.load()
        other = _shared(settings, db_b, clock, store, "b")
        await other.load()
    assert restarted.level is Level.MEDIUM and other.level is Level.MEDIUM
    assert await store.read_override() == restarted.override


async def test_start_up_without_redis_keeps_the_sqlite_override(tmp_path: Path) -> None:
    """An unreachable Redis at start-up leaves the local pin in force instead of failing."""
    client = Redis.from_url("redis://127.0.0.1:1/0")
    try:
        async with Database.open(tmp_path / "x.db") as db:
            await db.state.set("degrade_override", Override(Level.LIGHT, 42, 1_000).to_dict())
            controller = _shared(
                load_settings(), db, FakeClock(), RedisLevelStore(client, "x"), "a"
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
        controller = _shared(load_settings(), db, FakeClock(), store, "a")
        await controller.set_override(Level.HEAVY, 42)
        await redis_client.delete(store.key("override"))
        await controller.pull()
        assert await store.read_override() == controller.override
        assert controller.level is Level.HEAVY


async def test_the_automatic_level_is_the_highest_of_the_live_hosts(
    tmp_path: Path, redis_client: Redis, redis_namespace: str
) -> None:
    """Effective level = max(own automatic level, live hosts' published ones); a host
    whose entry expired stops counting, and each change reaches subscribers."""
    settings = load_settings(degrade={"escalate_after_s": 10})
    clock, wall = FakeClock(), WallClock()
    seen: list[Transition] = []
    store = RedisLevelStore(redis_client, redis_namespace, now_ms=wall)
    async with Database.open(tmp_path / "x.db") as db:
        here = _shared(settings, db, clock, store, "here")
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
        here = _shared(settings, db, FakeClock(), store, "here")
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
        here = _shared(load_settings(degrade={"auto": False}), db, FakeClock(), store, "here")
        await here.pull()
        assert here.level is Level.NORMAL
