"""`imagine bench scheduler --sweep`: the workload grid, its traces, figures and report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from backend.bench.policies import POLICIES
from backend.bench.sim import service_time
from backend.bench.sweep import (
    AXES,
    Family,
    SweepConfig,
    family_trace,
    feasibility,
    flood_effect,
    grid,
    run_sweep,
    trace_targets,
)
from backend.bench.sweep_report import sweep_markdown, write_sweep_report
from backend.scheduling.lanes import StepModel
from cli import main
from config.settings import load_settings

TINY_AXES = {
    "short_fraction": (0.8,),
    "cost_ratio": (5, 20),
    "shared_shape": (False,),
    "load": (0.85,),
    "mix": ("flood",),
}


@pytest.fixture(scope="module")
def model() -> StepModel:
    return StepModel.from_settings(load_settings().scheduler)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, model: StepModel) -> dict:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("sweep") / "extra.jsonl"
    record = {"user": "a", "tier": "pro", "steps": 4, "width": 512, "height": 512, "n": 4}
    path.write_text("".join(json.dumps({**record, "t": i, "lane": None}) + "\n" for i in range(12)))
    config = SweepConfig(jobs=60, seed=3, extra=(path,), axes=TINY_AXES)
    return run_sweep(load_settings(), config, step_model=model, say=lambda _: None)


def test_grid_is_every_combination_of_the_axes() -> None:
    """The default grid holds each combination once, with distinct names."""
    families = grid()
    assert len(families) == math.prod(len(values) for values in AXES.values()) == 216
    assert len({family.name for family in families}) == 216


def test_family_trace_has_the_asked_mix(model: StepModel) -> None:
    """Short fraction, long/short cost ratio, shapes, the flooder's share and the seed
    all show in the generated trace."""
    family = Family(0.8, 20, False, 0.7, "flood")
    trace = family_trace(family, seed=1, jobs=3000, step_model=model)
    solo = service_time(model)
    short = [job for job in trace if job.steps == 4 and job.width == 512]
    long = [job for job in trace if job not in short]
    assert len(short) / len(trace) == pytest.approx(0.8, abs=0.03)
    assert solo(long[0]) / solo(short[0]) == pytest.approx(20, rel=0.1)
    assert {job.width for job in long} == {1024}
    assert sum(job.user == "flood" for job in trace) / len(trace) == pytest.approx(1 / 3, abs=0.03)
    assert trace == family_trace(family, seed=1, jobs=3000, step_model=model)
    shared = family_trace(Family(0.5, 5, True, 0.7, "paid"), seed=1, jobs=500, step_model=model)
    assert {job.width for job in shared} == {512}
    assert {job.tier for job in shared} > {"free"}


def test_sweep_scores_every_trace_with_every_policy(tiny_sweep: dict) -> None:  # type: ignore[type-arg]
    """Each grid trace and trace file is replayed through every policy with the
    documented figures; SLO attainment rises with the factor."""
    traces = tiny_sweep["traces"]
    assert [trace["name"] for trace in traces][-1] == "extra.jsonl"
    assert len(traces) == 3 and tiny_sweep["sweep"]["traces"] == 3
    for trace in traces:
        assert list(trace["policies"]) == list(POLICIES)
        for figures in trace["policies"].values():
            for cls in ("short", "long"):
                values = list(figures["slo_attainment"][cls].values())
                assert values == sorted(values)
            assert 0 <= figures["busy_fraction"] <= 1 and figures["refused"] >= 0
    assert traces[-1]["family"] is None and traces[0]["family"]["cost_ratio"] == 5


def test_targets_apply_where_the_issue_sets_them(tiny_sweep: dict) -> None:  # type: ignore[type-arg]
    """The 10x short gain is judged only where long jobs cost 20x or more; misses list
    exactly the failing traces."""
    by_name = {trace["name"]: trace for trace in tiny_sweep["traces"]}
    assert "short_p99_gain_vs_fifo" not in by_name["s80-r5-apart-l0.85-flood"]["targets"]
    assert "short_p99_gain_vs_fifo" in by_name["s80-r20-apart-l0.85-flood"]["targets"]
    assert "preemptions_per_1000" in by_name["s80-r20-apart-l0.85-flood"]["targets"]
    for name, misses in tiny_sweep["misses"].items():
        failing = {
            t["name"]
            for t in tiny_sweep["traces"]
            if not t["targets"].get(name, {"ok": True})["ok"]
        }
        assert {miss["trace"] for miss in misses} == failing


def _figures(p99: float, long_mean: float, jain: float, pre: float = 0) -> dict:  # type: ignore[type-arg]
    """A policy's figures on one trace, as far as the targets read them."""
    return {
        "short_p99_wait_s": p99,
        "long_mean_completion_s": long_mean,
        "jain": jain,
        "preemptions_per_1000": pre,
    }


def test_trace_targets_compare_against_fifo_and_the_best_baseline() -> None:
    """Ours at 1 s short p99 against FIFO's 20 s and SRPT's 0.5 s: the 10x gain holds,
    the best-baseline bound fails; long completion and Jain are checked."""
    policies = {
        "fifo": _figures(20.0, 100.0, 0.9),
        "srpt": _figures(0.5, 110.0, 0.9, 500),
        "ours": _figures(1.0, 130.0, 0.97, 350),
    }
    found = trace_targets(policies, Family(0.8, 20, True, 0.85, "free"))
    assert found["short_p99_gain_vs_fifo"]["ok"] and found["short_p99_gain_vs_fifo"]["value"] == 20
    assert not found["short_p99_vs_best_baseline"]["ok"]
    assert not found["long_mean_vs_fifo"]["ok"] and found["jain"]["ok"]
    assert not found["preemptions_per_1000"]["ok"]
    assert "preemptions_per_1000" not in trace_targets(policies, Family(0.8, 20, True, 0.5, "free"))
    assert "flood_other_p99_ratio" not in found
    flooded = trace_targets(policies, Family(0.8, 20, True, 0.85, "flood"), 1.5)
    assert flooded["flood_other_p99_ratio"] == {"value": 1.5, "target": "<= 1.2", "ok": False}


def test_feasibility_judges_every_policy_as_ours_is() -> None:
    """On ``easy`` SRPT and ours meet every target; on ``hard`` no policy reaches Jain
    0.95, ours is too slow for long jobs and SRPT for short ones, so no policy meets
    them all; FIFO never gains 10x on itself."""
    family = {
        "short_fraction": 0.8,
        "cost_ratio": 20,
        "shared_shape": True,
        "load": 0.85,
        "mix": "free",
    }
    easy = {
        "fifo": _figures(20.0, 100.0, 0.96),
        "srpt": _figures(1.0, 110.0, 0.97),
        "ours": _figures(1.0, 105.0, 0.98),
    }
    hard = {
        "fifo": _figures(20.0, 100.0, 0.9),
        "srpt": _figures(3.0, 110.0, 0.9),
        "ours": _figures(1.0, 130.0, 0.94),
    }
    traces = [
        {"name": "easy", "family": family, "policies": easy},
        {"name": "hard", "family": family, "policies": hard},
    ]
    found = feasibility(traces)
    assert found["meets_all"] == {"fifo": 0, "srpt": 1, "ours": 1}
    assert found["none_meets_all"] == ["hard"]
    assert found["none_meets"]["jain"] == ["hard"]
    assert found["none_meets"]["short_p99_gain_vs_fifo"] == []
    assert found["none_meets"]["long_mean_vs_fifo"] == []


def test_flood_effect_replays_the_trace_without_the_flooder(model: StepModel) -> None:
    """The flood trace's other users wait at least as long with the flooder as without
    (the same arrivals, less load); a trace without a flooder has no figure."""
    settings = load_settings()
    flood = family_trace(Family(0.8, 20, False, 0.85, "flood"), seed=3, jobs=150, step_model=model)
    assert any(job.user == "flood" for job in flood)
    ratio = flood_effect(settings, flood, step_model=model)
    assert ratio is not None and ratio >= 1.0
    free = family_trace(Family(0.8, 20, False, 0.85, "free"), seed=3, jobs=150, step_model=model)
    assert flood_effect(settings, free, step_model=model) is None


def test_the_sweep_reports_the_flood_effect_on_flood_traces(tiny_sweep: dict) -> None:  # type: ignore[type-arg]
    """Every flood trace of the grid carries the flooder's effect on the others and its
    target; the trace file, which has no flooder, has neither."""
    for trace in tiny_sweep["traces"]:
        flooded = trace["family"] is not None and trace["family"]["mix"] == "flood"
        assert (trace["flood_other_p99_ratio"] is not None) is flooded
        assert ("flood_other_p99_ratio" in trace["targets"]) is flooded


def test_report_has_a_table_per_axis_and_heat_maps(tiny_sweep: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The markdown has one table per axis, one for the trace files and the targets;
    the report folder gets both heat maps as PNG."""
    text = sweep_markdown(tiny_sweep)
    for axis in AXES:
        assert f"By {axis}:" in text
    assert "Trace files:" in text and "Targets of ours:" in text and "Feasibility" in text
    written = write_sweep_report(tmp_path, tiny_sweep)
    for name in ("heat_short_gain.png", "heat_slo.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tmp_path / "sweep.md" in written
    assert json.loads((tmp_path / "sweep.json").read_text())["sweep"]["traces"] == 3


def test_cli_sweep_ends_with_the_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    """--sweep replays the whole grid (here 4 jobs a trace, two policies) and ends with
    one JSON object; --synthetic is refused with it."""
    args = ["bench", "scheduler", "--sweep", "--jobs", "4", "--policies", "fifo,ours", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sweep"]["traces"] == 216
    assert set(result["axes"]) == set(AXES)
    assert main([*args, "--synthetic"]) == 2
