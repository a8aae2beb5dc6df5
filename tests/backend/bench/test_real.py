"""`imagine bench scheduler --real`: a trace through the real service and engine."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest

from backend.bench.real import bench_settings, real_jobs, separating_cost
from backend.bench.sim import service_time
from backend.bench.trace import TraceJob, synthetic_trace
from backend.scheduling.lanes import CostModel, StepModel, lane_by_cost, rows_for
from cli import main
from config.settings import load_settings

SHORT = {"steps": 4, "width": 512, "height": 512, "n": 2}
LONG = {"steps": 50, "width": 1024, "height": 1024, "n": 4}


def _trace_line(t: float, user: str, tier: str, shape: dict[str, int]) -> str:
    return json.dumps({"t": t, "user": user, "tier": tier, "lane": None, **shape})


def test_jobs_keep_their_shape_class_scaled_down() -> None:
    """Sides go to the 64-px grid at an eighth (64..128), steps to a fifth (at least 2),
    samples are capped to the device's rows, and users get ids by first arrival."""
    trace = [
        TraceJob(0, 0.0, "a", "free", steps=4, width=512, height=512, n=4),
        TraceJob(1, 1.0, "b", "pro", steps=50, width=1024, height=1024, n=4),
        TraceJob(2, 2.0, "a", "free", steps=1, width=768, height=2048, n=8),
    ]
    short, long, odd = real_jobs(trace, max_batch_rows=8)
    assert (short.spec.width, short.spec.height, short.spec.steps, short.spec.n) == (64, 64, 2, 4)
    assert (long.spec.width, long.spec.height, long.spec.steps, long.spec.n) == (128, 128, 10, 4)
    assert (odd.spec.width, odd.spec.height, odd.spec.steps, odd.spec.n) == (128, 128, 2, 4)
    assert [job.user_id for job in (short, long, odd)] == [1, 2, 1]


def test_separating_cost_splits_or_errs_least() -> None:
    """A threshold falls between separable costs; with overlap it misplaces the fewest."""
    cut = separating_cost([0.1, 0.2], [0.5, 0.9])
    assert 0.2 < cut < 0.5
    cut = separating_cost([0.1, 0.2, 0.6], [0.5, 0.9, 1.0])
    assert 0.2 < cut < 0.5 or 0.6 <= cut < 0.9
    assert separating_cost([0.1], []) > 0.1 and separating_cost([], [0.1]) < 0.1


def test_default_trace_jobs_keep_their_lanes(engine_env: Path, tmp_path: Path) -> None:
    """The moved thresholds put every small job of the default trace in the lane its
    trace shape gets with the configured settings."""
    settings = load_settings()
    model = StepModel.from_settings(settings.scheduler)
    trace = synthetic_trace(seed=3, jobs=200, mean_service_s=service_time(model))
    jobs = real_jobs(trace, settings.engine.max_batch_rows)
    bench, mismatches = bench_settings(settings, tmp_path, jobs, time_scale=0.05)
    cost = CostModel(model)
    lanes = set()
    for job in jobs:
        item, spec = job.trace, job.spec
        assert spec.steps is not None
        traced = cost.job_cost_s(
            "m", steps=item.steps, rows=rows_for(item.n, 7.0), width=item.width, height=item.height
        )
        small = cost.job_cost_s(
            "m", steps=spec.steps, rows=rows_for(spec.n, 7.0), width=spec.width, height=spec.height
        )
        assert lane_by_cost(small, bench.scheduler) is lane_by_cost(traced, settings.scheduler)
        lanes.add(lane_by_cost(small, bench.scheduler))
    assert mismatches == 0 and len(lanes) >= 2
    assert bench.data_dir == tmp_path and bench.engine.device == "cpu"


def test_cli_real_run_reports_overhead_per_step(
    engine_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Short and long jobs of two tiers all finish on the real engine; the last line is
    the documented JSON with finite, non-negative overhead figures; nothing is left behind."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    trace = tmp_path / "t.jsonl"
    lines = [
        _trace_line(0.0, "a", "free", LONG),
        _trace_line(0.5, "b", "pro", SHORT),
        _trace_line(1.0, "c", "free", SHORT),
        _trace_line(1.5, "b", "pro", LONG),
        _trace_line(2.0, "d", "pro", SHORT),
        _trace_line(2.5, "a", "free", SHORT),
    ]
    trace.write_text("\n".join(lines) + "\n")
    args = ["bench", "scheduler", "--real", "--trace", str(trace), "--time-scale", "0.05"]
    assert main([*args, "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == "real" and result["jobs"] == 6
    assert (result["succeeded"], result["failed"], result["refused"]) == (6, 0, 0)
    assert result["steps"] > 0 and result["lane_mismatches"] == 0
    overhead = result["overhead_ms"]
    assert overhead["samples"] > 0
    for key in ("p50", "p99", "max"):
        assert math.isfinite(overhead[key]) and overhead[key] >= 0
    assert overhead["p50"] <= overhead["p99"] <= overhead["max"]
    assert set(result["lanes"]) == {"realtime", "batch"}
    assert sum(lane["jobs"] for lane in result["lanes"].values()) == 6
    assert isinstance(result["preemptions"], int) and result["preemptions"] >= 0
    assert "claim_ms" in result
    target = result["targets"]["overhead_p99_ms"]
    assert target["value"] == overhead["p99"] and target["target"] == "<= 1.0"
    assert isinstance(target["ok"], bool)
    assert list(scratch.iterdir()) == [] and not (engine_env / "imagine.db").exists()


def test_cli_real_bad_trace_line_names_it(
    engine_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In --real mode too, a bad trace line exits 2 naming the line and the field."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(_trace_line(0.0, "a", "free", SHORT) + "\n" + '{"t": 1, "user": "b"}\n')
    assert main(["bench", "scheduler", "--real", "--trace", str(trace)]) == 2
    assert "line 2, field 'tier'" in capsys.readouterr().err


def test_cli_real_refuses_simulation_only_options(
    engine_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out belongs to the simulation: --real refuses it with exit status 2."""
    assert main(["bench", "scheduler", "--real", "--out", str(tmp_path / "out")]) == 2
    assert "--out" in capsys.readouterr().err
