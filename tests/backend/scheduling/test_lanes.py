"""Lanes from estimated cost, the cost model, and the classifier's speed and tier rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backend.models import Lane, Speed
from backend.scheduling.lanes import (
    CostModel,
    StepModel,
    batching_pays,
    classify,
    lane_by_cost,
    rows_for,
)
from config.settings import SchedulerSettings, load_settings


def test_lane_by_cost_uses_the_thresholds() -> None:
    """Cost up to 15 s is realtime, up to 180 s batch, above that background."""
    scheduler = load_settings().scheduler
    assert lane_by_cost(15.0, scheduler) is Lane.REALTIME
    assert lane_by_cost(15.1, scheduler) is Lane.BATCH
    assert lane_by_cost(181.0, scheduler) is Lane.BACKGROUND


def test_cost_grows_with_samples_pixels_and_steps() -> None:
    """A 1024px 50-step job costs far more than a 512px 4-step one; the cost model
    follows measured step times."""
    model = CostModel(StepModel.from_settings(SchedulerSettings()))
    short = model.job_cost_s("m", steps=4, rows=rows_for(4, 7.0), width=512, height=512)
    long = model.job_cost_s("m", steps=50, rows=rows_for(4, 7.0), width=1024, height=1024)
    assert long > 40 * short
    model.observe("m", rows=8, width=512, height=512, step_s=1.0)
    assert model.job_cost_s("m", steps=4, rows=8, width=512, height=512) == pytest.approx(4.0)
    assert rows_for(4, 1.0) == 4 and rows_for(4, None) == 8


def test_classify_follows_speed_tier_and_budget() -> None:
    """Relax goes to background, turbo lifts batch-sized work for tiers that have it,
    a tier without turbo gets fast, and a spent fast budget falls back to relax."""
    scheduler = load_settings().scheduler
    tiers = scheduler.tiers
    assert classify(50.0, None, "pro", tiers["pro"], scheduler).lane is Lane.BATCH
    assert classify(50.0, Speed.TURBO, "pro", tiers["pro"], scheduler).lane is Lane.REALTIME
    free_turbo = classify(50.0, Speed.TURBO, "free", tiers["free"], scheduler)
    assert free_turbo.lane is Lane.BATCH and "no turbo" in free_turbo.reason
    assert classify(1.0, Speed.RELAX, "pro", tiers["pro"], scheduler).lane is Lane.BACKGROUND
    spent = classify(1.0, Speed.FAST, "free", tiers["free"], scheduler, fast_left_s=0.0)
    assert spent.lane is Lane.BACKGROUND and spent.speed is Speed.RELAX
    assert "budget" in spent.reason


def test_batching_pays_while_it_saves_the_given_share_of_device_time() -> None:
    """With a fixed cost per step, joining saves that cost: a lot of a small batch's
    step, little of a big one's; an empty batch or a zero bound always takes a job."""
    model = StepModel(fixed_s=0.015, row_s=0.009, pixel_exponent=1.15)

    def at(width: int) -> Callable[[int], float]:
        return lambda rows: model.step_s(rows, width, width)

    # 512 px, 8 + 8 rows: 15 ms saved of 174 ms (8.6%); 1024 px: 15 of 738 ms (2%).
    assert batching_pays(at(512), 8, 8, 0.05)
    assert not batching_pays(at(1024), 8, 8, 0.05)
    assert batching_pays(at(1024), 8, 8, 0.01)
    assert batching_pays(at(1024), 0, 8, 0.05)
    assert batching_pays(at(1024), 8, 8, 0.0)
