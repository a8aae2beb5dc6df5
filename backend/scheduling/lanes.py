"""A job's lane from its estimated cost, the lane the user asked for, and their tier.

Pure: the cost model learns from measured step times that workers report, and the
classifier is a function of numbers. Nothing here imports torch, redis or discord.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from backend.errors import BadInputError
from backend.models import Lane, Speed
from config.settings import SchedulerSettings, TierSettings

REFERENCE_PIXELS = 512 * 512
# Weight of the newest measurement in the moving average of measured/predicted steps.
LEARNING_RATE = 0.2


class StepTimes(Protocol):
    """Seconds of one denoising step of ``rows`` rows at a latent shape."""

    def step_s(self, rows: int, width: int, height: int) -> float:
        """Seconds of one step of ``rows`` rows at ``width`` x ``height`` pixels."""


@dataclass(frozen=True, slots=True)
class StepModel:
    """Seconds per denoising step of a batch: ``fixed_s + row_s * rows * scale``, where
    ``scale = (pixels / 512^2) ** pixel_exponent`` (attention grows faster than pixels).
    No defaults: the scheduler settings are the one source (:meth:`from_settings`)."""

    fixed_s: float
    row_s: float
    pixel_exponent: float

    def step_s(self, rows: int, width: int, height: int) -> float:
        """Seconds of one step of ``rows`` rows at ``width`` x ``height`` pixels."""
        scale: float = (width * height / REFERENCE_PIXELS) ** self.pixel_exponent
        return self.fixed_s + self.row_s * rows * scale

    @classmethod
    def from_settings(cls, scheduler: SchedulerSettings) -> StepModel:
        """The cost model the settings give for before any step was measured."""
        return cls(scheduler.step_fixed_s, scheduler.step_row_s, scheduler.step_pixel_exponent)


def rows_for(n: int, guidance: float | None) -> int:
    """UNet rows a job takes: two per sample when guided (unknown guidance counts as
    guided), as the engine batches them."""
    return n * (2 if guidance is None or guidance > 1.0 else 1)


def batching_pays(
    step_s: Callable[[int], float], running_rows: int, rows: int, min_gain: float
) -> bool:
    """Whether ``rows`` more rows joining a batch of ``running_rows`` (of one shape,
    ``step_s(rows)`` seconds a step) save at least ``min_gain`` of the device time the
    two would take stepping apart. A step's cost grows almost in proportion to its rows
    once the device is busy, so past a point a bigger batch saves little and only makes
    each step, which more urgent work waits for, longer."""
    if running_rows <= 0 or min_gain <= 0:
        return True
    apart = step_s(running_rows) + step_s(rows)
    return apart - step_s(running_rows + rows) >= min_gain * apart


class CostModel:
    """Estimated device-seconds of a job running alone.

    Starts from a :class:`StepModel` and corrects it per (model, width, height) by a
    moving average of measured over predicted step times, so estimates follow the
    hardware the service actually runs on.
    """

    def __init__(self, steps: StepTimes) -> None:
        self.steps: StepTimes = steps
        self._correction: dict[tuple[str, int, int], float] = {}

    def step_s(self, model: str, rows: int, width: int, height: int) -> float:
        """Seconds of one step of ``model``, corrected by what was measured at its size."""
        factor = self._correction.get((model, width, height), 1.0)
        return self.steps.step_s(rows, width, height) * factor

    def job_cost_s(self, model: str, *, steps: int, rows: int, width: int, height: int) -> float:
        """Estimated device-seconds of ``steps`` steps of ``rows`` rows, running alone."""
        return steps * self.step_s(model, rows, width, height)

    def observe(self, model: str, *, rows: int, width: int, height: int, step_s: float) -> None:
        """Learn from one measured step (``step_s`` seconds for ``rows`` rows)."""
        predicted = self.steps.step_s(rows, width, height)
        if predicted <= 0 or step_s <= 0:
            return
        key = (model, width, height)
        ratio = step_s / predicted
        old = self._correction.get(key)
        self._correction[key] = ratio if old is None else old + LEARNING_RATE * (ratio - old)


@dataclass(frozen=True, slots=True)
class LaneDecision:
    """Where a job goes and why; ``speed`` is what it is charged as (fast or relax)."""

    lane: Lane
    speed: Speed
    cost_s: float
    reason: str


def lane_by_cost(cost_s: float, scheduler: SchedulerSettings) -> Lane:
    """The lane of a job of ``cost_s`` device-seconds by the settings' thresholds alone."""
    if cost_s <= scheduler.realtime_max_cost_s:
        return Lane.REALTIME
    if cost_s <= scheduler.batch_max_cost_s:
        return Lane.BATCH
    return Lane.BACKGROUND


def classify(
    cost_s: float,
    requested: Speed | None,
    tier_name: str,
    tier: TierSettings,
    scheduler: SchedulerSettings,
    *,
    fast_left_s: float | None = None,
) -> LaneDecision:
    """The lane of a job of estimated ``cost_s`` device-seconds.

    ``--fast`` (the default) goes by cost; ``--turbo`` lifts a batch-sized job into
    realtime; ``--relax`` goes to the background lane. A speed the tier does not
    allow steps down (turbo to fast, fast to relax); so does fast once the user's
    monthly fast budget (``fast_left_s``, None: unlimited) is spent.
    """
    speed = requested or Speed.FAST
    reasons = []
    allowed = {Speed(name.value) for name in tier.speeds}
    if speed is Speed.TURBO and speed not in allowed:
        speed = Speed.FAST
        reasons.append(f"tier {tier_name} has no turbo")
    if speed is Speed.FAST and speed not in allowed:
        speed = Speed.RELAX
        reasons.append(f"tier {tier_name} has no fast lane")
    if speed is not Speed.RELAX and fast_left_s is not None and fast_left_s <= 0:
        speed = Speed.RELAX
        reasons.append("fast budget spent this month")
    if speed is Speed.RELAX and speed not in allowed:
        raise BadInputError(f"tier {tier_name} allows no lane for this job")
    by_cost = lane_by_cost(cost_s, scheduler)
    if speed is Speed.RELAX:
        lane = Lane.BACKGROUND
    elif speed is Speed.TURBO and by_cost is not Lane.BACKGROUND:
        lane = Lane.REALTIME
    else:
        lane = by_cost
    reasons.append(f"{speed.value}, estimated {cost_s:.1f} device-s")
    charged = Speed.RELAX if speed is Speed.RELAX else Speed.FAST
    return LaneDecision(lane, charged, cost_s, "; ".join(reasons))
