"""The scheduler benchmark's figures, targets and command line (the simulation itself
is in :mod:`backend.bench.sim`).

Definitions, as the report prints them:

* wait: from a job's arrival to its first step; slowdown: time in system over the
  job's cost running alone.
* busy_fraction: the share of the time with jobs waiting in the queue during which
  the device was computing steps.
* jain: Jain's index of weight-normalised service (device-seconds over the tier
  weight) among the users backlogged, a job queued or running, for a whole window of
  ``--fair-window-s``; averaged over the windows with at least two such users.
* long jobs: every job our classifier did not put in the realtime lane.
* ETA error: the relative error of the wait estimated at arrival (by the production
  ETA model) against the wait that happened, for ``ours``, past a warm-up, over jobs
  that waited at least one second (a ratio of sub-second waits is noise).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backend.bench.sim import (
    BUSY_BUCKET_S,
    GUIDANCE,
    POLICIES,
    DeviceSpec,
    RunStats,
    SimJob,
    TableStepModel,
    build_jobs,
    run_policy,
)
from backend.bench.trace import TraceJob, load_trace, synthetic_trace
from backend.errors import BadInputError
from backend.fairness import LANE_ORDER, AgingPolicy
from backend.lanes import CostModel, StepModel, StepTimes, rows_for
from backend.models import Lane
from config.settings import SchedulerSettings, Settings


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def wait_s(job: SimJob) -> float:
    assert job.first_start_s is not None
    return job.first_start_s - job.trace.t_s


def sojourn_s(job: SimJob) -> float:
    assert job.finish_s is not None
    return job.finish_s - job.trace.t_s


def jain_index(values: Sequence[float]) -> float:
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares > 0 else 1.0


def windowed_jain(stats: RunStats, weights: dict[str, float], window_s: float) -> tuple[float, int]:
    """Jain's index of weight-normalised service among the users backlogged in a lane
    (a job of theirs in it queued or running) for a whole window, averaged over the
    (lane, window) pairs with at least two such users, each weighted by the service
    those users received in it (a window in which a lane got one job's worth of device
    time says little about its shares). Fair queuing shares a lane, so the index is
    taken per lane. Returns (index, pairs counted)."""
    spans: dict[tuple[Lane, str], list[tuple[float, float]]] = {}
    for job in sorted(stats.jobs, key=lambda j: j.trace.t_s):
        assert job.finish_s is not None
        merged = spans.setdefault((job.lane, job.trace.user), [])
        if merged and job.trace.t_s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], job.finish_s))
        else:
            merged.append((job.trace.t_s, job.finish_s))
    windows = int(max(job.finish_s or 0.0 for job in stats.jobs) // window_s)
    served: dict[tuple[Lane, str], list[float]] = {}
    for flow, steps in stats.service.items():
        per_window = served.setdefault(flow, [0.0] * (windows + 1))
        for at, amount in steps:
            per_window[int(at // window_s)] += amount
    weighted = total = 0.0
    pairs = 0
    for w in range(windows):
        start, stop = w * window_s, (w + 1) * window_s
        for lane in LANE_ORDER:
            flows = [
                f for f, merged in spans.items() if f[0] is lane and _covers(merged, start, stop)
            ]
            if len(flows) < 2:
                continue
            service = [served.get(flow, [0.0] * (w + 1))[w] for flow in flows]
            if sum(service) <= 0:
                continue
            index = jain_index(
                [s / weights[flow[1]] for s, flow in zip(service, flows, strict=True)]
            )
            weighted += index * sum(service)
            total += sum(service)
            pairs += 1
    return (weighted / total if total else 1.0), pairs


def _covers(merged: list[tuple[float, float]], start: float, stop: float) -> bool:
    i = bisect.bisect_right(merged, (start, math.inf)) - 1
    return i >= 0 and merged[i][0] <= start and merged[i][1] >= stop


def policy_metrics(
    stats: RunStats, settings: SchedulerSettings, *, window_s: float
) -> dict[str, Any]:
    jobs = stats.jobs
    lanes: dict[str, Any] = {}
    for lane in LANE_ORDER:
        members = [job for job in jobs if job.lane is lane]
        if not members:
            continue
        waits = [wait_s(job) for job in members]
        slowdowns = [sojourn_s(job) / job.cost_s for job in members]
        lanes[lane.value] = {
            "jobs": len(members),
            "p50_wait_s": round(percentile(waits, 50), 3),
            "p99_wait_s": round(percentile(waits, 99), 3),
            "p99_slowdown": round(percentile(slowdowns, 99), 3),
        }
    weights = {job.trace.user: job.weight for job in jobs}
    lowest = min(settings.tiers, key=lambda name: settings.tiers[name].weight)
    lowest_jobs = [job for job in jobs if job.trace.tier == lowest]
    jain, windows = windowed_jain(stats, weights, window_s)
    aging = AgingPolicy.from_settings(settings)
    span = max(job.finish_s or 0.0 for job in jobs) - min(job.trace.t_s for job in jobs)
    queued = stats.busy_queued_s + stats.idle_queued_s
    long_jobs = [job for job in jobs if job.lane is not Lane.REALTIME]
    return {
        "lanes": lanes,
        "busy_fraction": round(stats.busy_queued_s / queued, 4) if queued else 1.0,
        "images_per_s": round(sum(job.trace.n for job in jobs) / span, 3),
        "mean_batch": round(stats.jobs_in_steps / max(stats.steps, 1), 3),
        "preemptions_per_1000": round(1000 * stats.preemptions / len(jobs), 2),
        "jain": round(jain, 4),
        "jain_windows": windows,
        "max_wait_lowest_tier_s": round(max((wait_s(j) for j in lowest_jobs), default=0.0), 3),
        "lowest_tier_bound_ratio": round(
            max((wait_s(j) / aging.max_wait_s(j.lane) for j in lowest_jobs), default=0.0),
            3,
        ),
        "long_mean_completion_s": round(statistics.fmean(sojourn_s(j) for j in long_jobs), 3)
        if long_jobs
        else None,
    }


def eta_error(stats: RunStats, *, warmup_fraction: float, min_wait_s: float) -> dict[str, Any]:
    """Median relative error of estimated against actual waits, past the warm-up,
    over jobs that waited at least ``min_wait_s`` (shorter waits make ratios noise)."""
    jobs = sorted(stats.jobs, key=lambda j: j.trace.t_s)
    steady = jobs[int(len(jobs) * warmup_fraction) :]
    errors = []
    absolute = []
    for job in steady:
        if job.est_wait_s is None:
            continue
        actual = wait_s(job)
        absolute.append(abs(job.est_wait_s - actual))
        if actual >= min_wait_s:
            errors.append(abs(job.est_wait_s - actual) / actual)
    return {
        "median_rel_error": round(statistics.median(errors), 4) if errors else None,
        "jobs": len(errors),
        "min_wait_s": min_wait_s,
        "median_abs_error_s": round(statistics.median(absolute), 3) if absolute else None,
    }


# -- targets and the run ---------------------------------------------------------------


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets on the default trace, evaluated on this run."""
    policies = result["policies"]
    ours, fifo = policies.get("ours"), policies.get("fifo")
    found: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, target: float, higher_is_better: bool) -> None:
        if value is None:
            return
        ok = value >= target if higher_is_better else value <= target
        op = ">=" if higher_is_better else "<="
        found[name] = {"value": round(value, 4), "target": f"{op} {target}", "ok": ok}

    if ours is None:
        return found
    if fifo is not None:
        rt_ours = ours["lanes"].get("realtime", {}).get("p99_wait_s")
        rt_fifo = fifo["lanes"].get("realtime", {}).get("p99_wait_s")
        if rt_ours is not None and rt_fifo is not None:
            add("realtime_p99_wait_fifo_over_ours", rt_fifo / max(rt_ours, 1e-6), 10.0, True)
        if ours["long_mean_completion_s"] and fifo["long_mean_completion_s"]:
            ratio = ours["long_mean_completion_s"] / fifo["long_mean_completion_s"]
            add("long_mean_completion_ours_over_fifo", ratio, 1.2, False)
    add("busy_fraction", ours["busy_fraction"], 0.95, True)
    add("jain", ours["jain"], 0.95, True)
    add("lowest_tier_wait_over_bound", ours["lowest_tier_bound_ratio"], 1.0, False)
    eta = result.get("eta", {}).get("median_rel_error")
    add("eta_median_rel_error", eta, 0.25, False)
    return found


def service_time(step_model: StepTimes) -> Callable[[TraceJob], float]:

    def alone(job: TraceJob) -> float:
        rows = rows_for(job.n, GUIDANCE)
        return job.steps * step_model.step_s(rows, job.width, job.height)

    return alone


def run_scheduler_bench(
    settings: Settings,
    trace: list[TraceJob],
    *,
    step_model: StepTimes,
    policies: Sequence[str] = POLICIES,
    fair_window_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]], dict[str, list[tuple[float, float]]]]:
    """Run every policy over the trace; returns the result object, the waits per policy
    and lane, and the busy fraction over time per policy."""
    scheduler = settings.scheduler
    device = DeviceSpec(
        step_model, settings.engine.max_batch_rows, settings.engine.batch_window_ms / 1000
    )
    cost = CostModel(step_model)
    result: dict[str, Any] = {"jobs": len(trace), "policies": {}}
    waits: dict[str, dict[str, list[float]]] = {}
    busy: dict[str, list[tuple[float, float]]] = {}
    for name in policies:
        jobs = build_jobs(trace, scheduler, cost, device.capacity_rows)
        started = time.perf_counter()
        stats = run_policy(name, jobs, scheduler, device)
        say(f"{name}: simulated {len(jobs)} jobs in {time.perf_counter() - started:.1f} s")
        result["policies"][name] = policy_metrics(stats, scheduler, window_s=fair_window_s)
        waits[name] = {
            lane.value: [wait_s(job) for job in jobs if job.lane is lane]
            for lane in LANE_ORDER
            if any(job.lane is lane for job in jobs)
        }
        busy[name] = [
            ((bucket + 0.5) * BUSY_BUCKET_S, min(1.0, seconds / BUSY_BUCKET_S))
            for bucket, seconds in sorted(stats.busy_buckets.items())
        ]
        if name == "ours":
            result["eta"] = eta_error(stats, warmup_fraction=0.1, min_wait_s=1.0)
    result["targets"] = targets(result)
    return result, waits, busy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--trace", type=Path, help="JSON Lines trace, one job per line")
    source.add_argument(
        "--synthetic", action="store_true", help="the default synthetic trace (the default)"
    )
    parser.add_argument("--seed", type=int, default=1, help="synthetic trace seed")
    parser.add_argument("--jobs", type=int, default=3000, help="synthetic trace length")
    parser.add_argument("--load", type=float, default=0.85, help="offered load vs capacity")
    parser.add_argument(
        "--step-times",
        type=Path,
        help="an `imagine bench engine --json` result to use as the device",
    )
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated subset of {','.join(POLICIES)}",
    )
    parser.add_argument("--fair-window-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="write report.md, result.json and PNG plots here")
    parser.add_argument("--save-trace", type=Path, help="also write the trace used as JSON Lines")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def main(settings: Settings, args: argparse.Namespace) -> int:
    from backend.bench.report import markdown_table, write_report
    from backend.bench.trace import write_trace

    policies = [name.strip() for name in str(args.policies).split(",") if name.strip()]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        raise BadInputError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    step_model = _step_model(settings, args.step_times)
    if args.trace is not None:
        trace = load_trace(args.trace, tiers=settings.scheduler.tiers)
        if not trace:
            raise BadInputError(f"trace {args.trace} holds no jobs")
    else:
        trace = synthetic_trace(
            seed=args.seed, jobs=args.jobs, load=args.load, mean_service_s=service_time(step_model)
        )
    if args.save_trace is not None:
        write_trace(args.save_trace, trace)
    result, waits, busy = run_scheduler_bench(
        settings,
        trace,
        step_model=step_model,
        policies=policies,
        fair_window_s=args.fair_window_s,
        say=lambda line: print(line, flush=True),
    )
    print(markdown_table(result))
    if args.out is not None:
        for path in write_report(args.out, result, waits, busy):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def _step_model(settings: Settings, path: Path | None) -> StepTimes:
    if path is None:
        return StepModel.from_settings(settings.scheduler)
    try:
        data = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as exc:
        raise BadInputError(f"--step-times {path}: cannot read a JSON result ({exc})") from exc
    return TableStepModel.from_engine_json(data)
