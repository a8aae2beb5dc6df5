"""The degradation ladder: escalation, relaxation, hysteresis, override, and what each
level restricts. Pure policy: no database, store or loop."""

from __future__ import annotations

from typing import Any

import pytest

from backend.degrade.ladder import (
    Ladder,
    Level,
    LoadSample,
    Restrictions,
    Transition,
    restrictions,
)
from backend.models import Lane
from config.settings import DegradeSettings, Settings, load_settings

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


# -- restrictions --------------------------------------------------------------------------


def _restrictions(level: Level, settings: Settings) -> Restrictions:
    """``level``'s restrictions under the degrade section and tiers of ``settings``."""
    return restrictions(level, settings.degrade, settings.scheduler.tiers)


def test_normal_and_light_allow_everything() -> None:
    """Normal and light pause no tier and no lane."""
    settings = load_settings()
    for level in (Level.NORMAL, Level.LIGHT):
        allow = _restrictions(level, settings).claim_filter
        assert all(allow.allows(lane, tier) for lane in Lane for tier in settings.scheduler.tiers)


def test_medium_pauses_unpaid_tiers_only() -> None:
    """Medium excludes 'free' but not 'basic', 'pro' or 'admin', in every lane."""
    allow = _restrictions(Level.MEDIUM, load_settings()).claim_filter
    assert allow.exclude_tiers == frozenset({"free"})
    assert all(allow.allows(lane, tier) for lane in Lane for tier in ("basic", "pro", "admin"))


def test_heavy_allows_only_paid_realtime_work() -> None:
    """Heavy lets only the realtime lane of paid tiers start."""
    allow = _restrictions(Level.HEAVY, load_settings()).claim_filter
    assert allow.lanes == frozenset({Lane.REALTIME})
    assert allow.allows(Lane.REALTIME, "pro") and not allow.allows(Lane.BATCH, "pro")
    assert not allow.allows(Lane.REALTIME, "free")


def test_steps_scale_from_light_upwards_and_never_below_one() -> None:
    """Light and above run 0.6 of the steps (30 -> 18), at least one; normal runs them all."""
    settings = load_settings()
    assert _restrictions(Level.NORMAL, settings).apply_steps(30) == 30
    for level in (Level.LIGHT, Level.MEDIUM, Level.HEAVY):
        scaled = _restrictions(level, settings)
        assert scaled.steps_factor == 0.6
        assert scaled.apply_steps(30) == 18 and scaled.apply_steps(1) == 1


def test_a_small_steps_factor_still_runs_one_step() -> None:
    """However small the factor, a degraded request runs at least one step."""
    scaled = _restrictions(Level.LIGHT, load_settings(degrade={"light_steps_factor": 0.1}))
    assert scaled.apply_steps(3) == 1 and scaled.apply_steps(30) == 3


def test_tiers_marked_paid_in_settings_decide_what_medium_pauses() -> None:
    """A tier configured unpaid is paused at medium, whatever its name."""
    trial = {"weight": 1, "rate_per_min": 1, "max_running": 1, "max_queued": 1}
    tiers = load_settings(scheduler={"tiers": {"trial": trial}}).scheduler.tiers
    allow = restrictions(Level.MEDIUM, load_settings().degrade, tiers).claim_filter
    assert "trial" in allow.exclude_tiers and "pro" not in allow.exclude_tiers
