"""`imagine bench scheduler`: the simulation over the production policy code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.bench.device import TableStepModel
from backend.bench.policies import POLICIES, SimJob, SrptDispatcher
from backend.bench.scheduler import fair_shares, fairness, run_scheduler_bench, simulate
from backend.bench.sim import RunStats, service_time
from backend.bench.trace import TraceJob, synthetic_trace
from backend.errors import BadInputError
from backend.models import Lane
from backend.scheduling.lanes import StepModel
from cli import main
from config.settings import load_settings

LANE_KEYS = {"jobs", "p50_wait_s", "p99_wait_s", "p99_slowdown"}
POLICY_KEYS = {
    "lanes",
    "busy_fraction",
    "images_per_s",
    "mean_batch",
    "preemptions_per_1000",
    "pauses_per_1000",
    "jain",
    "max_wait_lowest_tier_s",
}


@pytest.fixture(scope="module")
def small_run() -> dict:  # type: ignore[type-arg]
    settings = load_settings()
    model = StepModel.from_settings(settings.scheduler)
    trace = synthetic_trace(seed=5, jobs=400, load=0.85, mean_service_s=service_time(model))
    result, _, _ = run_scheduler_bench(settings, trace, step_model=model, say=lambda _: None)
    return result


def test_every_policy_reports_the_documented_shape(small_run: dict) -> None:  # type: ignore[type-arg]
    """Each policy has every documented figure, per lane and overall."""
    assert small_run["jobs"] == 400
    assert set(small_run["policies"]) == set(POLICIES)
    for figures in small_run["policies"].values():
        assert set(figures) >= POLICY_KEYS
        for lane in figures["lanes"].values():
            assert set(lane) == LANE_KEYS
        assert sum(lane["jobs"] for lane in figures["lanes"].values()) == 400


def test_every_policy_reports_classes_and_slo_attainment(small_run: dict) -> None:  # type: ignore[type-arg]
    """Each policy reports the short and long class with SLO attainment per factor,
    rising with the factor, and the short class holds 80% of the jobs."""
    for figures in small_run["policies"].values():
        classes = figures["classes"]
        assert classes["short"]["jobs"] == 320 and classes["long"]["jobs"] == 80
        assert {"p50_wait_s", "p99_wait_s"} <= set(classes["short"])
        assert {"mean_completion_s", "p99_completion_s"} <= set(classes["long"])
        for cls in ("short", "long"):
            slo = classes[cls]["slo_attainment"]
            assert list(slo) == ["1.2", "1.5", "2", "3", "5"]
            values = list(slo.values())
            assert values == sorted(values) and values[0] >= 0 and values[-1] <= 1
        assert figures["preemptions_per_1000"] >= 0


def test_same_jobs_same_lanes_for_every_policy(small_run: dict) -> None:  # type: ignore[type-arg]
    """Lanes come from our classifier, so every policy sees the same lane sizes."""
    sizes = {
        name: {lane: f["jobs"] for lane, f in figures["lanes"].items()}
        for name, figures in small_run["policies"].items()
    }
    assert len({json.dumps(s, sort_keys=True) for s in sizes.values()}) == 1


def test_preemption_cuts_realtime_waits_against_fifo(small_run: dict) -> None:
    """Ours preempts and batches: realtime p99 wait well under FIFO's, no preemptions
    in the baselines."""
    policies = small_run["policies"]
    assert policies["ours"]["lanes"]["realtime"]["p99_wait_s"] < (
        policies["fifo"]["lanes"]["realtime"]["p99_wait_s"] / 3
    )
    assert policies["fifo"]["preemptions_per_1000"] == 0
    assert policies["fifo"]["pauses_per_1000"] == 0
    ours = policies["ours"]
    assert ours["preemptions_per_1000"] + ours["pauses_per_1000"] > 0
    assert policies["fifo"]["mean_batch"] == 1.0
    assert policies["fifo_batch"]["mean_batch"] > 1.0


def test_job_larger_than_the_device_is_named(tmp_path: Path) -> None:
    """A trace job needing more rows than the device holds is refused by its number."""
    settings = load_settings()
    model = StepModel.from_settings(settings.scheduler)
    big = TraceJob(index=3, t_s=0.0, user="u", tier="free", steps=4, width=512, height=512, n=16)
    with pytest.raises(BadInputError, match="trace job 3 needs 32"):
        run_scheduler_bench(settings, [big], step_model=model, say=lambda _: None)


def test_cli_trace_file_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trace file replays through the CLI; the last line is the JSON result and the
    report files are written."""
    trace = tmp_path / "t.jsonl"
    lines = [
        {
            "t": i * 0.5,
            "user": f"u{i % 3}",
            "tier": "pro",
            "steps": 4,
            "width": 512,
            "height": 512,
            "n": 4,
            "lane": None,
        }
        for i in range(20)
    ]
    trace.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    status = main(["bench", "scheduler", "--trace", str(trace), "--out", str(out), "--json"])
    assert status == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["jobs"] == 20
    assert (out / "report.md").is_file() and (out / "busy_fraction.png").is_file()
    for figures in result["policies"].values():
        assert set(figures["classes"]) == {"short", "long"}
        assert set(figures["classes"]["long"]["slo_attainment"]) == {"1.2", "1.5", "2", "3", "5"}
    assert "short p99 wait s" in (out / "report.md").read_text()


def test_cli_bad_trace_line_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trace line with a negative time fails with exit status 2 naming the line."""
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"t": -1, "user": "u", "tier": "free", "steps": 4, "width": 512, "height": 512,'
        ' "n": 1, "lane": null}\n'
    )
    assert main(["bench", "scheduler", "--trace", str(trace)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_step_times_from_engine_bench() -> None:
    """An engine bench result becomes a step-time table, scaled to other shapes."""
    data = {
        "width": 64,
        "height": 64,
        "batches": {"1": {"step_s": 0.01}, "2": {"step_s": 0.015}, "4": {"step_s": 0.02}},
    }
    model = TableStepModel.from_engine_json(data, 1.15)
    assert model.step_s(2, 64, 64) == pytest.approx(0.01)
    assert model.step_s(6, 64, 64) == pytest.approx(0.0175)
    assert model.step_s(2, 128, 128) > 4 * 0.01
    with pytest.raises(BadInputError):
        TableStepModel.from_engine_json({"batches": {}}, 1.15)


def _flow_stats(split: tuple[float, float]) -> RunStats:
    """Users a (weight 2) and b (weight 1), each with 10 jobs of 1 s queued at 0 and
    done at 30; each second the batch lane's service is split ``split``."""
    jobs = []
    for user, weight in (("a", 2.0), ("b", 1.0)):
        for _ in range(10):
            trace = TraceJob(len(jobs), 0.0, user, "pro", 4, 512, 512, 1, None)
            jobs.append(SimJob(trace, Lane.BATCH, 1.0, 2, weight, 0, finish_s=30.0))
    stats = RunStats("test", jobs)
    for user, share in zip(("a", "b"), split, strict=True):
        stats.service[(Lane.BATCH, user)] = [(float(t), share) for t in range(30)]
    return stats


def test_fairness_is_one_when_service_follows_the_weights() -> None:
    """Service split 2:1 between users weighted 2:1 is perfectly fair; 1:1 is not."""
    weights = {"a": 2.0, "b": 1.0}
    fair = fairness(_flow_stats((2 / 3, 1 / 3)), weights, min_jobs=5)
    assert fair.jain == pytest.approx(1.0) and fair.flows == 2
    shares = fair_shares(_flow_stats((2 / 3, 1 / 3)), weights)
    assert shares[(Lane.BATCH, "a")] == pytest.approx((20.0, 20.0))
    unfair = fairness(_flow_stats((0.5, 0.5)), weights, min_jobs=5)
    # Ratios 0.75 and 1.5: (2.25)^2 / (2 * (0.5625 + 2.25)) = 0.9.
    assert unfair.jain == pytest.approx(0.9)


def test_fairness_headline_skips_flows_too_short_to_judge() -> None:
    """A flow entitled to fewer than ``min_jobs`` of its jobs counts only in jain_all."""
    weights = {"a": 2.0, "b": 1.0}
    fair = fairness(_flow_stats((0.5, 0.5)), weights, min_jobs=15)
    assert fair.flows == 1 and fair.jain == 1.0
    assert fair.flows_all == 2 and fair.jain_all == pytest.approx(0.9)


def test_srpt_serves_short_work_first_and_preempts(small_run: dict) -> None:  # type: ignore[type-arg]
    """The srpt baseline batches and preempts (pausing in place or evicting): its
    short-class p99 wait is far under FIFO's and it records preemptions."""
    srpt, fifo = small_run["policies"]["srpt"], small_run["policies"]["fifo"]
    assert srpt["preemptions_per_1000"] + srpt["pauses_per_1000"] > 0
    assert srpt["mean_batch"] > 1.0
    short_p99 = srpt["classes"]["short"]["p99_wait_s"]
    assert short_p99 < fifo["classes"]["short"]["p99_wait_s"] / 3


def test_srpt_takes_the_least_remaining_work() -> None:
    """Of three queued jobs the one with the least device time left comes first, and a
    job given back is ranked by what it has left."""

    def job(index: int, cost_s: float, steps_done: int = 0) -> SimJob:
        trace = TraceJob(index, 0.0, "u", "free", 10, 512, 512, 1, None)
        return SimJob(trace, Lane.BATCH, cost_s, 2, 1.0, 0, steps_done=steps_done)

    srpt = SrptDispatcher()
    big, small, half = job(0, 10.0), job(1, 2.0), job(2, 10.0, steps_done=9)
    for item in (big, small, half):
        srpt.arrive(item, 0.0)
    assert [srpt.take(0.0) for _ in range(3)] == [half, small, big]
    big.steps_done = 9
    srpt.give_back(big, 1.0)
    assert srpt.head(1.0) is big and big.rank == 1000


@pytest.mark.parametrize(("min_gain", "joins"), [(0.05, False), (0.0, True)])
def test_a_batch_below_realtime_grows_only_while_batching_pays(
    min_gain: float, joins: bool
) -> None:
    """Two batch-lane jobs at 1024 px, the second arriving while the first runs: by
    the default step model batching them saves 2% of the device time, so under
    ``batch_min_gain`` 0.05 the second waits for the first (each step stays short for
    realtime work); with 0 it joins at once."""
    settings = load_settings(scheduler={"batch_min_gain": min_gain})
    model = StepModel.from_settings(settings.scheduler)
    trace = [
        TraceJob(0, 0.0, "a", "free", 50, 1024, 1024, 4, None),
        TraceJob(1, 1.0, "b", "free", 50, 1024, 1024, 4, None),
    ]
    stats = simulate(settings, trace, "ours", step_model=model)
    first, second = sorted(stats.jobs, key=lambda job: job.trace.index)
    assert first.lane is second.lane is Lane.BATCH
    assert first.finish_s is not None and second.first_start_s is not None
    assert (second.first_start_s < first.finish_s) is joins
