"""The simulated device: checkpoint save and load costs of evictions and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.bench.device import CheckpointTime, DeviceSpec, ResumeCosts
from backend.bench.scheduler import load_resume_costs
from backend.bench.sim import build_jobs, run_policy
from backend.bench.trace import TraceJob
from backend.errors import BadInputError
from backend.scheduling.lanes import CostModel, StepModel
from config.settings import load_settings


def test_resume_costs_scale_from_the_nearest_measured_shape() -> None:
    """Costs come from the shape nearest in pixels, linear in pixels and samples."""
    costs = ResumeCosts(
        (CheckpointTime(512, 512, 1e-3, 2e-4), CheckpointTime(1024, 1024, 5e-3, 1e-3))
    )
    assert costs.save_s(4, 512, 512) == pytest.approx(4e-3)
    assert costs.load_s(2, 1024, 1024) == pytest.approx(2e-3)
    # 640x640 is nearer 512x512: its figure scaled by 1.5625.
    assert costs.save_s(1, 640, 640) == pytest.approx(1e-3 * 1.5625)


def test_resume_costs_read_engine_results(tmp_path: Path) -> None:
    """`bench engine --json` output (progress lines, then JSON) gives one point per
    result; a file without checkpoint figures is refused naming the flag."""
    engine = {
        "checkpoint": {
            "width": 64,
            "height": 64,
            "save_s_per_sample": 0.5,
            "load_s_per_sample": 0.25,
        }
    }
    path = tmp_path / "engine.json"
    path.write_text("batch 1: ...\n" + json.dumps(engine) + "\n")
    costs = load_resume_costs(path)
    assert costs is not None and costs.load_s(2, 64, 64) == pytest.approx(0.5)
    assert load_resume_costs(None) is None
    path.write_text(json.dumps({"batches": {}}) + "\n")
    with pytest.raises(BadInputError, match="--resume-costs"):
        load_resume_costs(path)


def _finish_of_long(costs: ResumeCosts) -> tuple[float, int]:
    settings = load_settings()
    model = StepModel.from_settings(settings.scheduler)
    trace = [
        TraceJob(0, 0.0, "a", "pro", 50, 1024, 1024, 4, None),
        TraceJob(1, 5.0, "b", "pro", 4, 512, 512, 4, None),
    ]
    jobs = build_jobs(trace, settings.scheduler, CostModel(model), 16)
    device = DeviceSpec(model, 16, 0.05, costs)
    stats = run_policy("ours", jobs, settings.scheduler, device)
    long = next(job for job in stats.jobs if job.trace.index == 0)
    assert long.finish_s is not None
    return long.finish_s, stats.preemptions


def test_eviction_and_resume_cost_the_measured_checkpoint_times() -> None:
    """A long job evicted once by a short one of another shape finishes later by
    exactly its save plus load time (4 samples at 1 + 2 s each)."""
    free, preempted = _finish_of_long(ResumeCosts((CheckpointTime(1024, 1024, 0.0, 0.0),)))
    dear, _ = _finish_of_long(ResumeCosts((CheckpointTime(1024, 1024, 1.0, 2.0),)))
    assert preempted == 1
    assert dear - free == pytest.approx(12.0)
