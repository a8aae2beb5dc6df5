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
logs transitions and tells subscribers. :class:`LoadMeter` turns raw observations
(job waits, device busy samples) into the :class:`LoadSample` the ladder reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from backend.fairness import EVERYTHING, ClaimFilter
from backend.models import Lane

if TYPE_CHECKING:
    from config.settings import DegradeSettings, Settings
    from storage.db import Database

log = structlog.get_logger(__name__)

OVERRIDE_KEY = "degrade_override"
DEFAULT_HISTORY_LEN = 50
DEFAULT_WINDOW_S = 300.0
P95_PERCENT = 95


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


Subscriber = Callable[[Transition], None]


class DegradeController:
    """The service's ladder: persisted override, logged transitions, subscribers.

    ``observe`` is synchronous (no I/O); only the override touches the database.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        now_s: Callable[[], float],
        *,
        history_len: int = DEFAULT_HISTORY_LEN,
    ) -> None:
        self.settings = settings
        self._db = db
        self._now_s = now_s
        self._ladder = Ladder(settings.degrade)
        self._override: Override | None = None
        self._history: deque[Transition] = deque(maxlen=history_len)
        self._subscribers: list[Subscriber] = []
        # Built once: the claim path asks for them on every job start.
        self._restrictions = {level: restrictions(level, settings) for level in Level}

    @property
    def level(self) -> Level:
        return self._ladder.level

    @property
    def auto_level(self) -> Level:
        return self._ladder.auto_level

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
        """Restore the override persisted by an earlier run, if any."""
        stored = await self._db.state.get(OVERRIDE_KEY)
        if stored is None:
            return
        try:
            override = Override(Level(stored["level"]), int(stored["actor"]), int(stored["at_ms"]))
        except (TypeError, KeyError, ValueError):
            # A bad value must not keep the service from starting; the admin can set it again.
            log.warning("degrade_override_invalid", value=stored)
            return
        self._override = override
        transition = self._ladder.set_override(override.level, self._now_s(), override.actor_id)
        log.info(
            "degrade_override_restored", level=override.level.value, actor_id=override.actor_id
        )
        self._publish(transition)

    def observe(self, sample: LoadSample) -> Transition | None:
        """Feed one load sample; the transition it caused, already published."""
        auto_before = self._ladder.auto_level
        transition = self._ladder.observe(sample, self._now_s())
        if transition is None and self._ladder.auto_level is not auto_before:
            log.info(
                "degrade_auto_level_changed",
                auto_from=auto_before.value,
                auto_to=self._ladder.auto_level.value,
                overridden_at=self.level.value,
            )
        self._publish(transition)
        return transition

    async def set_override(self, level: Level, actor_id: int) -> Transition | None:
        """Pin the level (persisted first, so a failed write changes nothing)."""
        override = Override(level, actor_id, self._db.now_ms())
        await self._db.state.set(OVERRIDE_KEY, override.to_dict())
        self._override = override
        transition = self._ladder.set_override(level, self._now_s(), actor_id)
        log.info("degrade_override_set", level=level.value, actor_id=actor_id)
        self._publish(transition)
        return transition

    async def clear_override(self, actor_id: int) -> Transition | None:
        """Back to automatic control, from the level the load currently calls for."""
        await self._db.state.delete(OVERRIDE_KEY)
        had = self._override
        self._override = None
        transition = self._ladder.clear_override(self._now_s(), actor_id)
        if had is not None:
            log.info("degrade_override_cleared", level=had.level.value, actor_id=actor_id)
        self._publish(transition)
        return transition

    def _publish(self, transition: Transition | None) -> None:
        if transition is None:
            return
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


# -- measuring ---------------------------------------------------------------------------


class LoadMeter:
    """Raw observations over a sliding window, read out as a :class:`LoadSample`.

    Feed ``record_wait`` at every job start (how long it queued) and ``record_busy``
    at every device tick (busy or not, or the fraction of the tick it was busy).
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.window_s = window_s
        self._waits: deque[tuple[float, float]] = deque()
        self._busy: deque[tuple[float, float]] = deque()

    def record_wait(self, wait_s: float, now_s: float) -> None:
        self._waits.append((now_s, max(0.0, wait_s)))
        self._prune(now_s)

    def record_busy(self, busy: bool | float, now_s: float) -> None:
        self._busy.append((now_s, min(1.0, max(0.0, float(busy)))))
        self._prune(now_s)

    def sample(self, queue_len: int, now_s: float) -> LoadSample:
        """The load now; an empty window reads as no wait and idle devices."""
        self._prune(now_s)
        return LoadSample(queue_len, self.p95_wait_s(), self.utilization())

    def p95_wait_s(self) -> float:
        """Nearest-rank p95 of the waits in the window (0 when none)."""
        if not self._waits:
            return 0.0
        waits = sorted(wait for _, wait in self._waits)
        # ceil(0.95 * n) in integers: the float product can land a hair above a whole number.
        rank = (P95_PERCENT * len(waits) + 99) // 100
        return waits[rank - 1]

    def utilization(self) -> float:
        if not self._busy:
            return 0.0
        return sum(busy for _, busy in self._busy) / len(self._busy)

    def _prune(self, now_s: float) -> None:
        oldest_s = now_s - self.window_s
        for entries in (self._waits, self._busy):
            while entries and entries[0][0] < oldest_s:
                entries.popleft()
