"""The degradation ladder: normal, light, medium, heavy.

When the service is overloaded it gives up quality before it gives up users, one rung
at a time (thresholds after the seed article, all in :class:`DegradeSettings`):

* ``light``: fewer diffusion steps (``light_steps_factor`` of what was asked).
* ``medium``: also pause unpaid tiers, so paid users are served first.
* ``heavy``: also pause every lane but realtime; the rest stays queued.

:class:`Ladder` is the pure policy (time passed in, no I/O): one rung up after the
pressure condition held for ``escalate_after_s``, one rung down after the queue stayed
short for ``relax_after_s`` or the devices idle for ``relax_utilization_after_s``. The
relax thresholds sit well below the escalate ones, and every timer restarts at a
transition, so the level moves at most one rung per duration and never flaps. An
admin override pins the level; the automatic level keeps following the load beneath
it and takes over again when the override is cleared.

:class:`DegradeController` owns a ladder for the service: it persists the override,
shares it and the automatic level with the other processes through a
``backend.levelstore.LevelStore``, logs transitions and tells subscribers.
``backend.loadwatch.LoadWatcher`` samples the load and feeds it.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from backend.errors import BackendError
from backend.fairness import EVERYTHING, ClaimFilter
from backend.models import Lane

if TYPE_CHECKING:
    from backend.levelstore import LevelStore
    from config.settings import DegradeSettings, Settings
    from storage.db import Database

log = structlog.get_logger(__name__)

OVERRIDE_KEY = "degrade_override"
DEFAULT_HISTORY_LEN = 50
# A process's published level lasts this many sampling intervals: one missed sample
# (a slow Redis round trip) does not drop it, a dead process stops counting soon.
HOST_TTL_INTERVALS = 3


class Level(StrEnum):
    """A rung of the ladder, mildest first.

    Compare rungs by :attr:`rank`: ``<`` on a StrEnum compares the names as text.
    """

    NORMAL = "normal"
    LIGHT = "light"
    MEDIUM = "medium"
    HEAVY = "heavy"

    @property
    def rank(self) -> int:
        return LEVELS.index(self)

    def up(self) -> Level:
        """The next harsher rung (``heavy`` stays ``heavy``)."""
        return LEVELS[min(self.rank + 1, len(LEVELS) - 1)]

    def down(self) -> Level:
        """The next milder rung (``normal`` stays ``normal``)."""
        return LEVELS[max(self.rank - 1, 0)]


LEVELS: tuple[Level, ...] = tuple(Level)


@dataclass(frozen=True, slots=True)
class LoadSample:
    """The load at one moment: queued jobs, p95 wait of recent starts, busy fraction."""

    queue_len: int
    p95_wait_s: float
    utilization: float


@dataclass(frozen=True, slots=True)
class Transition:
    """The effective level changed, and why."""

    from_level: Level
    to_level: Level
    reason: str
    at_s: float


# -- policy --------------------------------------------------------------------------------


def _since(started_s: float | None, holds: bool, now_s: float) -> float | None:
    """A condition timer: when the condition began holding, or None once it breaks."""
    if not holds:
        return None
    return now_s if started_s is None else started_s


class Ladder:
    """Moves the level one rung at a time from load samples; pure, time passed in."""

    def __init__(self, settings: DegradeSettings, level: Level = Level.NORMAL) -> None:
        self.settings = settings
        self._auto = level
        self._override: Level | None = None
        # When each condition began holding without a break (None: it does not hold).
        self._pressure_since: float | None = None
        self._short_queue_since: float | None = None
        self._idle_since: float | None = None

    @property
    def level(self) -> Level:
        """The effective level: the override when one is set, else the automatic one."""
        return self._override if self._override is not None else self._auto

    @property
    def auto_level(self) -> Level:
        """Where the load alone puts the ladder, override or not."""
        return self._auto

    @property
    def override(self) -> Level | None:
        return self._override

    def observe(self, sample: LoadSample, now_s: float) -> Transition | None:
        """Feed one sample; the transition of the effective level it caused, if any.

        Under an override the automatic level still moves (and returns None), so that
        clearing the override hands back to a level that reflects the current load.
        """
        if not self.settings.auto:
            return None
        reason = self._track(sample, now_s)
        if reason is None:
            return None
        step, text = reason
        before = self.level
        self._auto = self._auto.up() if step > 0 else self._auto.down()
        self._restart_timers(now_s)
        if self.level is before:
            return None
        return Transition(before, self.level, text, now_s)

    def set_override(self, level: Level, now_s: float, actor: int | str) -> Transition | None:
        """Pin the effective level regardless of load until :meth:`clear_override`."""
        before = self.level
        self._override = level
        if level is before:
            return None
        return Transition(before, level, f"admin override by {actor}", now_s)

    def clear_override(self, now_s: float, actor: int | str) -> Transition | None:
        """Hand the level back to the load, at the current automatic level."""
        if self._override is None:
            return None
        before = self.level
        self._override = None
        # The first automatic move after an admin's hand-back waits a full duration.
        self._restart_timers(now_s)
        if self.level is before:
            return None
        return Transition(before, self.level, f"override cleared by {actor}", now_s)

    def _track(self, sample: LoadSample, now_s: float) -> tuple[int, str] | None:
        """Update the condition timers; (+1 or -1, reason) when one of them ripened."""
        cfg = self.settings
        long_queue = sample.queue_len > cfg.escalate_queue_len
        hot = (
            sample.utilization > cfg.escalate_utilization
            and sample.p95_wait_s > cfg.escalate_p95_wait_s
        )
        pressure = long_queue or hot
        # Under pressure nothing counts towards relaxing: devices stalled behind a long
        # queue are idle, yet the service is not calm.
        short_queue = not pressure and sample.queue_len < cfg.relax_queue_len
        idle = not pressure and sample.utilization < cfg.relax_utilization
        self._pressure_since = _since(self._pressure_since, pressure, now_s)
        self._short_queue_since = _since(self._short_queue_since, short_queue, now_s)
        self._idle_since = _since(self._idle_since, idle, now_s)
        if self._auto is not Level.HEAVY and (
            held := _held_s(self._pressure_since, cfg.escalate_after_s, now_s)
        ):
            if long_queue:
                return 1, f"queue length {sample.queue_len} > {cfg.escalate_queue_len} for {held}"
            return 1, (
                f"utilization {sample.utilization:.2f} > {cfg.escalate_utilization:g} and "
                f"p95 wait {sample.p95_wait_s:.0f} s > {cfg.escalate_p95_wait_s:g} s for {held}"
            )
        if self._auto is Level.NORMAL:
            return None
        if held := _held_s(self._short_queue_since, cfg.relax_after_s, now_s):
            return -1, f"queue length {sample.queue_len} < {cfg.relax_queue_len} for {held}"
        if held := _held_s(self._idle_since, cfg.relax_utilization_after_s, now_s):
            return (
                -1,
                f"utilization {sample.utilization:.2f} < {cfg.relax_utilization:g} for {held}",
            )
        return None

    def _restart_timers(self, now_s: float) -> None:
        # A condition that still holds counts again from now: one rung per duration.
        if self._pressure_since is not None:
            self._pressure_since = now_s
        if self._short_queue_since is not None:
            self._short_queue_since = now_s
        if self._idle_since is not None:
            self._idle_since = now_s


def _held_s(started_s: float | None, duration_s: float, now_s: float) -> str | None:
    """How long the condition has held, as reason text, once it held for ``duration_s``."""
    if started_s is None or now_s - started_s < duration_s:
        return None
    return f"{now_s - started_s:.0f} s"


# -- what a level means ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restrictions:
    """What the service gives up at one level: steps, and which work may start."""

    level: Level
    steps_factor: float = 1.0
    claim_filter: ClaimFilter = EVERYTHING

    def apply_steps(self, steps: int) -> int:
        """The steps to run for a request of ``steps`` (at least one)."""
        if self.steps_factor >= 1.0:
            return max(1, steps)
        # Rounded, not floored: 30 * 0.6 must stay 18 whatever the float error.
        return max(1, round(steps * self.steps_factor))


def restrictions(level: Level, settings: Settings) -> Restrictions:
    """The restrictions of ``level`` under ``settings`` (tiers from the scheduler)."""
    if level is Level.NORMAL:
        return Restrictions(level)
    factor = settings.degrade.light_steps_factor
    if level is Level.LIGHT:
        return Restrictions(level, factor)
    unpaid = frozenset(name for name, tier in settings.scheduler.tiers.items() if not tier.paid)
    if level is Level.MEDIUM:
        return Restrictions(level, factor, ClaimFilter(exclude_tiers=unpaid))
    return Restrictions(level, factor, ClaimFilter(unpaid, frozenset({Lane.REALTIME})))


# -- the service's owner ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """An admin's pin of the level, as persisted under ``degrade_override``."""

    level: Level
    actor_id: int
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level.value, "actor": self.actor_id, "at_ms": self.at_ms}


@dataclass(frozen=True, slots=True)
class Cleared:
    """An admin handed the level back to the load.

    Kept where hosts share the override, so that a host restarting after the clear does
    not bring back the pin its own database still holds.
    """

    actor_id: int
    at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"level": None, "actor": self.actor_id, "at_ms": self.at_ms}


OverrideRecord = Override | Cleared


def override_from_dict(value: object) -> OverrideRecord:
    """The record stored as ``value`` (``level`` None: a clear); ValueError if it is none."""
    if not isinstance(value, dict):
        raise ValueError(f"not an override record: {value!r}")
    try:
        actor_id, at_ms, level = int(value["actor"]), int(value["at_ms"]), value["level"]
        return (
            Cleared(actor_id, at_ms) if level is None else Override(Level(level), actor_id, at_ms)
        )
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not an override record: {value!r}") from exc


@dataclass(frozen=True, slots=True)
class HostLoad:
    """What one process shares with the others: its automatic level and the load behind it.

    ``devices`` counts its local workers; a front end without any shares zero.
    """

    auto_level: Level
    sample: LoadSample
    devices: int

    def to_dict(self) -> dict[str, Any]:
        sample = self.sample
        return {
            "auto": self.auto_level.value,
            "queue_len": sample.queue_len,
            "p95_wait_s": sample.p95_wait_s,
            "utilization": sample.utilization,
            "devices": self.devices,
        }

    @classmethod
    def from_dict(cls, value: object) -> HostLoad:
        """The load stored as ``value``; ValueError if it is not one."""
        if not isinstance(value, dict):
            raise ValueError(f"not a host load: {value!r}")
        try:
            sample = LoadSample(
                int(value["queue_len"]), float(value["p95_wait_s"]), float(value["utilization"])
            )
            return cls(Level(value["auto"]), sample, int(value["devices"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a host load: {value!r}") from exc


def local_host_id() -> str:
    """This process among the others sharing the level: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _highest(*levels: Level) -> Level:
    return max(levels, key=lambda level: level.rank)


Subscriber = Callable[[Transition], None]


class DegradeController:
    """The service's ladder: shared and persisted override, logged transitions, subscribers.

    The effective level is the override when one is set, else the highest of this
    process's automatic level and those the other live processes published to the
    store (:meth:`pull`); with the in-memory store there are none. ``observe`` is
    synchronous (no I/O); the override and the sharing go through the database and
    the store.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        now_s: Callable[[], float],
        *,
        store: LevelStore,
        host_id: str | None = None,
        history_len: int = DEFAULT_HISTORY_LEN,
    ) -> None:
        self.settings = settings
        self.host_id = host_id if host_id is not None else local_host_id()
        # Published loads outlive a few missed samples, not a dead process.
        self.host_ttl_s = HOST_TTL_INTERVALS * settings.degrade.sample_interval_s
        self._db = db
        self._store = store
        self._now_s = now_s
        self._ladder = Ladder(settings.degrade)
        self._override: Override | None = None
        self._peer_level = Level.NORMAL
        self._history: deque[Transition] = deque(maxlen=history_len)
        self._subscribers: list[Subscriber] = []
        # Built once: the claim path asks for them on every job start.
        self._restrictions = {level: restrictions(level, settings) for level in Level}

    @property
    def level(self) -> Level:
        """The effective level: the override, else the highest automatic level."""
        if self._override is not None:
            return self._override.level
        return _highest(self._ladder.auto_level, self._peer_level)

    @property
    def auto_level(self) -> Level:
        """Where this process's own load puts the ladder, override or not."""
        return self._ladder.auto_level

    @property
    def peer_level(self) -> Level:
        """The highest automatic level the other live processes published (normal: none)."""
        return self._peer_level

    @property
    def override(self) -> Override | None:
        return self._override

    @property
    def restrictions(self) -> Restrictions:
        return self._restrictions[self.level]

    @property
    def history(self) -> Sequence[Transition]:
        """The last transitions, oldest first."""
        return tuple(self._history)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with every transition; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def load(self) -> None:
        """Restore the override: the shared record when the store has one, else the copy
        in this process's database, which then seeds the store. The store failing leaves
        the database's copy in force until :meth:`pull` reaches the store again."""
        local = await self._stored_override()
        shared: OverrideRecord | None
        try:
            shared = await self._store.read_override()
            if shared is None and local is not None:
                shared = await self._store.seed_override(local)
        except BackendError as exc:
            log.warning("degrade_shared_override_unavailable", error=str(exc))
            shared = local
        if shared != local:
            await self._keep_locally(shared)
        if isinstance(shared, Override):
            self._pin(shared, "degrade_override_restored")

    def observe(self, sample: LoadSample) -> Transition | None:
        """Feed one load sample; the transition it caused, already published."""
        before = self.level
        auto_before = self._ladder.auto_level
        moved = self._ladder.observe(sample, self._now_s())
        # Without an override the ladder reports every move of its own level, with the reason.
        transition = self._transition(before, moved.reason) if moved is not None else None
        if transition is None and self._ladder.auto_level is not auto_before:
            log.info(
                "degrade_auto_level_changed",
                auto_from=auto_before.value,
                auto_to=self._ladder.auto_level.value,
                effective=self.level.value,
            )
        return transition

    async def set_override(self, level: Level, actor_id: int) -> Transition | None:
        """Pin the level everywhere (persisted first, so a failed write changes nothing
        here; the store is written last, so other processes see only what was persisted)."""
        override = Override(level, actor_id, self._db.now_ms())
        await self._db.state.set(OVERRIDE_KEY, override.to_dict())
        await self._store.write_override(override)
        return self._pin(override, "degrade_override_set")

    async def clear_override(self, actor_id: int) -> Transition | None:
        """Back to automatic control everywhere, from the level the load calls for."""
        await self._db.state.delete(OVERRIDE_KEY)
        await self._store.write_override(Cleared(actor_id, self._db.now_ms()))
        return self._unpin(actor_id, "degrade_override_cleared")

    async def pull(self) -> dict[str, HostLoad]:
        """Catch up with the store: adopt an override set or cleared by another process,
        and take the other live processes' automatic levels into account. Returns the
        live processes' loads, this one's included."""
        await self._adopt(await self._store.read_override())
        hosts = await self._store.hosts()
        others = {host: load for host, load in hosts.items() if host != self.host_id}
        self._follow_peers(others)
        return hosts

    async def push(self, sample: LoadSample, devices: int) -> None:
        """Publish this process's automatic level and load for :attr:`host_ttl_s`."""
        load = HostLoad(self._ladder.auto_level, sample, devices)
        await self._store.publish(self.host_id, load, self.host_ttl_s)

    async def withdraw(self) -> None:
        """Stop sharing this process's level (at shutdown), before its entry expires."""
        await self._store.withdraw(self.host_id)

    async def _adopt(self, shared: OverrideRecord | None) -> None:
        current = self._override
        if shared is None:
            if current is None:
                return
            # The store lost the record (Redis flushed): put ours back, unless another
            # process did first.
            shared = await self._store.seed_override(current)
        if isinstance(shared, Override) and shared != current:
            await self._keep_locally(shared)
            self._pin(shared, "degrade_override_adopted")
        elif isinstance(shared, Cleared) and current is not None:
            await self._keep_locally(shared)
            self._unpin(shared.actor_id, "degrade_override_clear_adopted")

    def _follow_peers(self, others: dict[str, HostLoad]) -> None:
        top_host, top_level = None, Level.NORMAL
        if self.settings.degrade.auto:
            for host, load in sorted(others.items()):
                if load.auto_level.rank > top_level.rank:
                    top_host, top_level = host, load.auto_level
        previous = self._peer_level
        if top_level is previous:
            return
        before = self.level
        self._peer_level = top_level
        if top_level.rank > previous.rank:
            reason = f"host {top_host} at {top_level.value}"
        else:
            reason = f"other hosts at {top_level.value} or below"
        self._transition(before, reason)

    async def _stored_override(self) -> Override | None:
        stored = await self._db.state.get(OVERRIDE_KEY)
        if stored is None:
            return None
        try:
            record = override_from_dict(stored)
        except ValueError:
            # A bad value must not keep the service from starting; the admin can set it again.
            log.warning("degrade_override_invalid", value=stored)
            return None
        return record if isinstance(record, Override) else None

    async def _keep_locally(self, record: OverrideRecord | None) -> None:
        """Mirror the shared record into the database, the fallback of the next start."""
        if isinstance(record, Override):
            await self._db.state.set(OVERRIDE_KEY, record.to_dict())
        else:
            await self._db.state.delete(OVERRIDE_KEY)

    def _pin(self, override: Override, event: str) -> Transition | None:
        before = self.level
        self._override = override
        self._ladder.set_override(override.level, self._now_s(), override.actor_id)
        log.info(event, override=override.level.value, actor_id=override.actor_id)
        return self._transition(before, f"admin override by {override.actor_id}")

    def _unpin(self, actor_id: int, event: str) -> Transition | None:
        before, had = self.level, self._override
        self._override = None
        # The ladder restarts its timers: the first automatic move after a hand-back
        # waits a full duration.
        self._ladder.clear_override(self._now_s(), actor_id)
        if had is not None:
            log.info(event, override=had.level.value, actor_id=actor_id)
        return self._transition(before, f"override cleared by {actor_id}")

    def _transition(self, before: Level, reason: str) -> Transition | None:
        """Publish the move from ``before`` to the effective level, if there was one."""
        after = self.level
        if after is before:
            return None
        transition = Transition(before, after, reason, self._now_s())
        self._history.append(transition)
        # ``from`` is a keyword, hence the mapping.
        fields = {"from": transition.from_level.value, "to": transition.to_level.value}
        log.info("degrade_level_changed", **fields, reason=transition.reason)
        for callback in list(self._subscribers):
            try:
                callback(transition)
            except Exception:
                # One broken listener must not stop the others or the caller's loop.
                log.exception("degrade_subscriber_failed", callback=repr(callback))
        return transition
