"""The degradation ladder: levels, load samples, the hysteresis that moves one rung at a
time, and what each level restricts. Pure policy: no I/O, an injected clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from backend.models import Lane
from backend.scheduling.fairness import EVERYTHING, ClaimFilter

if TYPE_CHECKING:
    from config.settings import DegradeSettings, TierSettings


DEFAULT_HISTORY_LEN = 50


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
        """The rung's place on the ladder: 0 for normal, up to 3 for heavy."""
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
        """The pinned level; None when the load decides."""
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


def restrictions(
    level: Level, degrade: DegradeSettings, tiers: Mapping[str, TierSettings]
) -> Restrictions:
    """The restrictions of ``level``: fewer steps as ``degrade`` says from light upwards,
    and from medium upwards no new work of the ``tiers`` that are not paid."""
    if level is Level.NORMAL:
        return Restrictions(level)
    factor = degrade.light_steps_factor
    if level is Level.LIGHT:
        return Restrictions(level, factor)
    unpaid = frozenset(name for name, tier in tiers.items() if not tier.paid)
    if level is Level.MEDIUM:
        return Restrictions(level, factor, ClaimFilter(exclude_tiers=unpaid))
    return Restrictions(level, factor, ClaimFilter(unpaid, frozenset({Lane.REALTIME})))
