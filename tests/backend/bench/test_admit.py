"""The simulator's front door: the production admission control on simulated time."""

from __future__ import annotations

import pytest

from backend.bench.admit import SimAdmission
from backend.bench.device import DeviceSpec
from backend.bench.scheduler import run_scheduler_bench
from backend.bench.sim import build_jobs, run_policy
from backend.bench.trace import TraceJob
from backend.scheduling.lanes import CostModel, StepModel
from config.settings import load_settings


def test_free_tier_rate_limit_refuses_past_the_burst_and_refills() -> None:
    """A free user gets ten jobs in at once, the eleventh is refused by the user bucket,
    and six seconds later one more gets in."""
    gate = SimAdmission(load_settings())
    outcomes = [gate.check("a", "free", 0.0) for _ in range(11)]
    assert outcomes[:10] == [None] * 10 and outcomes[10] == "user"
    assert gate.check("a", "free", 6.0) is None


def test_queued_cap_counts_jobs_waiting_not_running() -> None:
    """The tier's queued cap (free: 4) refuses while four wait, and admits again once
    one of them starts."""
    gate = SimAdmission(load_settings())
    for _ in range(4):
        assert gate.check("a", "free", 0.0) is None
        gate.queued("a")
    assert gate.check("a", "free", 0.0) == "queued"
    gate.dequeued("a")
    assert gate.check("a", "free", 0.0) is None


def _burst(jobs: int) -> list[TraceJob]:
    return [TraceJob(i, i * 0.01, "flood", "free", 30, 512, 512, 4, None) for i in range(jobs)] + [
        TraceJob(jobs, 0.5, "paid", "pro", 4, 512, 512, 4, None)
    ]


def test_bench_refuses_a_flood_and_caps_running_jobs() -> None:
    """A free user's burst of 20 is cut to what the tier allows, the same jobs count in
    every policy's lanes and classes; without admission everything gets in."""
    settings = load_settings()
    model = StepModel.from_settings(settings.scheduler)
    result, _, _ = run_scheduler_bench(
        settings, _burst(20), step_model=model, policies=("fifo", "ours"), say=lambda _: None
    )
    for figures in result["policies"].values():
        assert sum(figures["refused"].values()) >= 10
        assert sum(lane["jobs"] for lane in figures["lanes"].values()) == 21
        assert figures["classes"]["short"]["jobs"] + figures["classes"]["long"]["jobs"] == 21
    open_door, _, _ = run_scheduler_bench(
        settings, _burst(20), step_model=model, admission=False, say=lambda _: None
    )
    assert all(figures["refused"] == {} for figures in open_door["policies"].values())


@pytest.mark.parametrize("policy", ["fifo_batch", "srpt", "fair_nopreempt", "ours"])
def test_every_policy_holds_a_free_user_to_the_tiers_running_cap(policy: str) -> None:
    """The tier's running cap (free: 2) holds under every policy: at no time does the
    free user have more jobs started and unfinished than that, while batching still
    mixes users."""
    settings = load_settings()
    cap = settings.scheduler.tiers["free"].max_running
    model = StepModel.from_settings(settings.scheduler)
    device = DeviceSpec(model, 16, 0.05, pause_rows=16)
    jobs = build_jobs(_burst(6), settings.scheduler, CostModel(model), 16)
    stats = run_policy(policy, jobs, settings.scheduler, device)
    spans = [(job.first_start_s, job.finish_s) for job in stats.jobs if job.trace.user == "flood"]
    assert len(spans) == 6
    for start, _ in spans:
        assert start is not None
        held = sum(1 for s, e in spans if s is not None and e is not None and s <= start < e)
        assert held <= cap
    assert (
        max(
            sum(1 for s, e in spans if s is not None and e is not None and s <= at < e)
            for at, _ in spans
            if at is not None
        )
        == cap
    )  # the cap binds: the burst keeps the free user at it
    assert stats.jobs_in_steps > stats.steps
