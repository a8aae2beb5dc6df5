"""The benchmark's job classes: the cheapest 80% by solo cost, and SLO attainment."""

from __future__ import annotations

import pytest

from backend.bench.classes import class_metrics, slo_attainment, split_classes
from backend.bench.policies import SimJob
from backend.bench.trace import TraceJob
from backend.models import Lane


def _job(index: int, cost_s: float, *, wait_s: float = 0.0, run_s: float | None = None) -> SimJob:
    trace = TraceJob(index, float(index), f"u{index}", "free", 4, 512, 512, 1, None)
    job = SimJob(trace, Lane.REALTIME, cost_s, 2, 1.0, 0)
    job.first_start_s = trace.t_s + wait_s
    job.finish_s = job.first_start_s + (cost_s if run_s is None else run_s)
    return job


def test_short_class_is_the_cheapest_eighty_percent_whatever_the_lane() -> None:
    """Ten jobs split 8:2 by cost, ties by arrival order, lanes ignored."""
    jobs = [_job(i, cost) for i, cost in enumerate([5, 1, 1, 9, 1, 1, 1, 1, 1, 1])]
    jobs[1].lane = Lane.BACKGROUND
    short, long = split_classes(jobs)
    assert len(short) == 8 and {job.trace.index for job in long} == {0, 3}
    assert jobs[1] in short


def test_slo_attainment_counts_jobs_within_k_times_their_cost() -> None:
    """Slowdowns 1, 1.4, 2.5 and a refused job: attainment per factor over all four."""
    jobs = [_job(0, 1.0), _job(1, 1.0, wait_s=0.4), _job(2, 2.0, wait_s=3.0), _job(3, 1.0)]
    jobs[3].first_start_s = jobs[3].finish_s = None
    assert slo_attainment(jobs) == {"1.2": 0.25, "1.5": 0.5, "2": 0.5, "3": 0.75, "5": 0.75}
    assert slo_attainment([]) == dict.fromkeys(("1.2", "1.5", "2", "3", "5"))


def test_class_metrics_have_the_documented_figures() -> None:
    """Short waits and long completions are taken from the right jobs."""
    jobs = [_job(i, 1.0, wait_s=float(i)) for i in range(8)]
    jobs += [_job(8, 10.0, run_s=12.0), _job(9, 10.0, run_s=20.0)]
    classes = class_metrics(jobs)
    assert classes["short"]["jobs"] == 8 and classes["long"]["jobs"] == 2
    assert classes["short"]["p50_wait_s"] == pytest.approx(3.5)
    assert classes["long"]["mean_completion_s"] == pytest.approx(16.0)
    assert classes["long"]["slo_attainment"]["1.2"] == 0.5
    assert set(classes["short"]) == {"jobs", "p50_wait_s", "p99_wait_s", "slo_attainment"}
