"""The scheduler benchmark's figures and targets (the simulation itself is in
:mod:`backend.bench.sim`).

Definitions, as the report prints them:

* wait: from a job's arrival to its first step; slowdown: time in system over the
  job's cost running alone.
* busy_fraction: the share of the time with jobs waiting in the queue during which
  the device was computing steps.
* jain: Jain's index, over users' flows (a user's jobs in one lane), of the service
  each received while backlogged (a job queued or running) over the service its tier
  weight entitled it to then: the lane's service split among its backlogged flows by
  weight, as fluid fair queuing would (see :func:`fairness` for which flows count).
* long jobs: every job our classifier did not put in the realtime lane.
* ETA error: the relative error of the wait estimated at arrival (by the production
  ETA model) against the wait that happened, for ``ours``, past a warm-up, over jobs
  that waited at least one second (a ratio of sub-second waits is noise).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.bench.admit import SimAdmission
from backend.bench.classes import class_metrics
from backend.bench.device import DeviceSpec, ResumeCosts, TableStepModel
from backend.bench.policies import POLICIES, SimJob
from backend.bench.sim import BUSY_BUCKET_S, RunStats, build_jobs, run_policy
from backend.bench.trace import TraceJob
from backend.errors import BadInputError
from backend.models import Lane
from backend.scheduling.fairness import LANE_ORDER, AgingPolicy
from backend.scheduling.lanes import CostModel, StepModel, StepTimes
from backend.stats import percentile
from config.settings import SchedulerSettings, Settings

Flow = tuple[Lane, str]
# The synthetic trace's length unless one is asked for.
SYNTHETIC_JOBS = 3000


def wait_s(job: SimJob) -> float:
    """From the job's arrival to its first step, in seconds."""
    assert job.first_start_s is not None
    return job.first_start_s - job.trace.t_s


def sojourn_s(job: SimJob) -> float:
    """From the job's arrival to its end, in seconds."""
    assert job.finish_s is not None
    return job.finish_s - job.trace.t_s


def jain_index(values: Sequence[float]) -> float:
    """Jain's index of ``values``: 1 when all are equal, down to 1/n when one has all."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares > 0 else 1.0


FAIR_MIN_JOBS = 5.0


@dataclass(frozen=True, slots=True)
class Fairness:
    """Jain's index over the flows with a fair share of at least ``min_jobs`` of their
    own jobs, the same over every flow, and how many flows each counts."""

    jain: float
    flows: int
    jain_all: float
    flows_all: int


def fair_shares(stats: RunStats, weights: dict[str, float]) -> dict[Flow, tuple[float, float]]:
    """Per flow (lane, user): the device-seconds it received and the device-seconds it
    was entitled to, both counted while it was backlogged (a job of its in the lane
    queued or running).

    The entitlement is the fluid fair share (generalised processor sharing): at each
    step, the service the lane received is split among the flows backlogged in it in
    proportion to their weights. A lane shares what the lanes above leave, so shares
    are taken per lane; the ratio received/entitled is comparable across lanes.
    """
    events: list[tuple[float, int, Flow, float]] = []
    for job in stats.jobs:
        assert job.finish_s is not None
        flow = (job.lane, job.trace.user)
        # At one instant: departures, then arrivals, then the step that starts then.
        events.append((job.trace.t_s, 1, flow, 0.0))
        events.append((job.finish_s, 0, flow, 0.0))
    received: dict[Flow, float] = {}
    for flow, steps in stats.service.items():
        received[flow] = sum(amount for _, amount in steps)
        events.extend((at, 2, flow, amount) for at, amount in steps)
    events.sort(key=lambda event: (event[0], event[1]))
    # Per lane: the running sum of (lane service / backlogged weight), and that weight.
    per_weight = dict.fromkeys(LANE_ORDER, 0.0)
    backlogged_weight = dict.fromkeys(LANE_ORDER, 0.0)
    depth: dict[Flow, int] = {}
    opened: dict[Flow, float] = {}
    entitled: dict[Flow, float] = {}
    for _, kind, flow, amount in events:
        lane, user = flow
        if kind == 2:
            per_weight[lane] += amount / backlogged_weight[lane]
        elif kind == 1:
            depth[flow] = depth.get(flow, 0) + 1
            if depth[flow] == 1:
                backlogged_weight[lane] += weights[user]
                opened[flow] = per_weight[lane]
        else:
            depth[flow] -= 1
            if depth[flow] == 0:
                backlogged_weight[lane] -= weights[user]
                share = weights[user] * (per_weight[lane] - opened.pop(flow))
                entitled[flow] = entitled.get(flow, 0.0) + share
    return {flow: (received.get(flow, 0.0), entitled[flow]) for flow in entitled}


def fairness(
    stats: RunStats, weights: dict[str, float], *, min_jobs: float = FAIR_MIN_JOBS
) -> Fairness:
    """Jain's index of received over entitled service per flow (1 is perfectly fair).

    A job runs whole while the fluid share would spread it, so a flow whose share is a
    job or two scores by that rounding, not by the scheduler: the headline index counts
    the flows entitled to at least ``min_jobs`` times their mean job's cost (rounding
    then moves the ratio by at most about 1/``min_jobs``); ``jain_all`` counts every flow.
    """
    costs: dict[Flow, list[float]] = {}
    for job in stats.jobs:
        costs.setdefault((job.lane, job.trace.user), []).append(job.cost_s)
    ratios, ratios_all = [], []
    for flow, (got, due) in fair_shares(stats, weights).items():
        if due <= 0:
            continue
        ratios_all.append(got / due)
        if due >= min_jobs * statistics.fmean(costs[flow]):
            ratios.append(got / due)
    return Fairness(
        jain_index(ratios) if ratios else 1.0,
        len(ratios),
        jain_index(ratios_all) if ratios_all else 1.0,
        len(ratios_all),
    )


def policy_metrics(
    stats: RunStats, settings: SchedulerSettings, *, fair_min_jobs: float = FAIR_MIN_JOBS
) -> dict[str, Any]:
    """One policy's figures: waits and slowdowns per lane, utilisation, batching,
    preemptions, fairness and the lowest tier's worst wait against its bound."""
    jobs = stats.jobs
    lanes: dict[str, Any] = {}
    for lane in LANE_ORDER:
        members = [job for job in jobs if job.lane is lane]
        submitted = len(members) + sum(job.lane is lane for job in stats.refused)
        if not members:
            continue
        waits = [wait_s(job) for job in members]
        slowdowns = [sojourn_s(job) / job.cost_s for job in members]
        lanes[lane.value] = {
            "jobs": submitted,
            "p50_wait_s": round(percentile(waits, 50), 3),
            "p99_wait_s": round(percentile(waits, 99), 3),
            "p99_slowdown": round(percentile(slowdowns, 99), 3),
        }
    weights = {job.trace.user: job.weight for job in jobs}
    lowest = min(settings.tiers, key=lambda name: settings.tiers[name].weight)
    lowest_jobs = [job for job in jobs if job.trace.tier == lowest]
    fair = fairness(stats, weights, min_jobs=fair_min_jobs)
    aging = AgingPolicy.from_settings(settings)
    span = max(job.finish_s or 0.0 for job in jobs) - min(job.trace.t_s for job in jobs)
    queued = stats.busy_queued_s + stats.idle_queued_s
    long_jobs = [job for job in jobs if job.lane is not Lane.REALTIME]
    return {
        "lanes": lanes,
        "classes": class_metrics([*jobs, *stats.refused]),
        "refused": _refusals(stats),
        "busy_fraction": round(stats.busy_queued_s / queued, 4) if queued else 1.0,
        "images_per_s": round(sum(job.trace.n for job in jobs) / span, 3),
        "mean_batch": round(stats.jobs_in_steps / max(stats.steps, 1), 3),
        "preemptions_per_1000": round(1000 * stats.preemptions / len(jobs), 2),
        "pauses_per_1000": round(1000 * stats.pauses / len(jobs), 2),
        "jain": round(fair.jain, 4),
        "jain_flows": fair.flows,
        "jain_all_flows": round(fair.jain_all, 4),
        "max_wait_lowest_tier_s": round(max((wait_s(j) for j in lowest_jobs), default=0.0), 3),
        "lowest_tier_bound_ratio": round(
            max((wait_s(j) / aging.max_wait_s(j.lane) for j in lowest_jobs), default=0.0),
            3,
        ),
        "long_mean_completion_s": round(statistics.fmean(sojourn_s(j) for j in long_jobs), 3)
        if long_jobs
        else None,
    }


def _refusals(stats: RunStats) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in stats.refused:
        assert job.refused is not None
        counts[job.refused] = counts.get(job.refused, 0) + 1
    return dict(sorted(counts.items()))


def eta_error(stats: RunStats, *, warmup_fraction: float, min_wait_s: float) -> dict[str, Any]:
    """Median relative error of estimated against actual waits, past the warm-up,
    over jobs that waited at least ``min_wait_s`` (shorter waits make ratios noise)."""
    jobs = sorted(stats.jobs, key=lambda j: j.trace.t_s)
    steady = jobs[int(len(jobs) * warmup_fraction) :]
    errors = []
    absolute = []
    by_lane: dict[str, list[float]] = {}
    for job in steady:
        if job.est_wait_s is None:
            continue
        actual = wait_s(job)
        absolute.append(abs(job.est_wait_s - actual))
        if actual >= min_wait_s:
            error = abs(job.est_wait_s - actual) / actual
            errors.append(error)
            by_lane.setdefault(job.lane.value, []).append(error)
    return {
        "median_rel_error": round(statistics.median(errors), 4) if errors else None,
        "jobs": len(errors),
        "min_wait_s": min_wait_s,
        "median_abs_error_s": round(statistics.median(absolute), 3) if absolute else None,
        "lanes": {
            lane: {"median_rel_error": round(statistics.median(found), 4), "jobs": len(found)}
            for lane, found in by_lane.items()
        },
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


def run_scheduler_bench(
    settings: Settings,
    trace: list[TraceJob],
    *,
    step_model: StepTimes,
    policies: Sequence[str] = POLICIES,
    fair_min_jobs: float = FAIR_MIN_JOBS,
    admission: bool = True,
    resume: ResumeCosts | None = None,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]], dict[str, list[tuple[float, float]]]]:
    """Run every policy over the trace, behind the production admission control unless
    ``admission`` is False, evictions and resumes costing ``resume`` (default: the
    table measured here); returns the result object, the waits per policy and lane,
    and the busy fraction over time per policy."""
    scheduler = settings.scheduler
    result: dict[str, Any] = {"jobs": len(trace), "policies": {}}
    waits: dict[str, dict[str, list[float]]] = {}
    busy: dict[str, list[tuple[float, float]]] = {}
    for name in policies:
        started = time.perf_counter()
        stats = simulate(
            settings, trace, name, step_model=step_model, admission=admission, resume=resume
        )
        say(f"{name}: simulated {len(trace)} jobs in {time.perf_counter() - started:.1f} s")
        result["policies"][name] = policy_metrics(stats, scheduler, fair_min_jobs=fair_min_jobs)
        waits[name] = {
            lane.value: [wait_s(job) for job in stats.jobs if job.lane is lane]
            for lane in LANE_ORDER
            if any(job.lane is lane for job in stats.jobs)
        }
        busy[name] = [
            ((bucket + 0.5) * BUSY_BUCKET_S, min(1.0, seconds / BUSY_BUCKET_S))
            for bucket, seconds in sorted(stats.busy_buckets.items())
        ]
        if name == "ours":
            result["eta"] = eta_error(stats, warmup_fraction=0.1, min_wait_s=1.0)
    result["targets"] = targets(result)
    return result, waits, busy


def device_for(
    settings: Settings, step_model: StepTimes, resume: ResumeCosts | None = None
) -> DeviceSpec:
    """The simulated device the settings describe: batch rows, idle window, pause room."""
    return DeviceSpec(
        step_model,
        settings.engine.max_batch_rows,
        settings.engine.batch_window_ms / 1000,
        resume,
        settings.scheduler.preempt_pause_rows,
    )


def simulate(
    settings: Settings,
    trace: list[TraceJob],
    policy: str,
    *,
    step_model: StepTimes,
    admission: bool = True,
    resume: ResumeCosts | None = None,
) -> RunStats:
    """One policy over ``trace`` on the device the settings describe, behind admission
    unless ``admission`` is False."""
    device = device_for(settings, step_model, resume)
    jobs = build_jobs(trace, settings.scheduler, CostModel(step_model), device.capacity_rows)
    gate = SimAdmission(settings) if admission else None
    return run_policy(policy, jobs, settings.scheduler, device, gate)


def check_policies(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as given, refusing an empty list or a name that is not a policy."""
    unknown = sorted(set(names) - set(POLICIES))
    if unknown or not names:
        raise BadInputError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    return tuple(names)


def load_step_model(settings: SchedulerSettings, path: Path | None) -> StepTimes:
    """The simulated device's step times: the table of an ``imagine bench engine --json``
    result at ``path`` (its last line), else the configured step model."""
    if path is None:
        return StepModel.from_settings(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as exc:
        raise BadInputError(f"--step-times {path}: cannot read a JSON result ({exc})") from exc
    return TableStepModel.from_engine_json(data, settings.step_pixel_exponent)


def load_resume_costs(path: Path | None) -> ResumeCosts | None:
    """Checkpoint save and load times from ``imagine bench engine --json`` results at
    ``path`` (one per line, each its last line's object), or None for the default table."""
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        found = [json.loads(line) for line in lines if line.lstrip().startswith(("{", "["))]
    except (OSError, ValueError) as exc:
        raise BadInputError(f"--resume-costs {path}: cannot read a JSON result ({exc})") from exc
    results = [item for data in found for item in (data if isinstance(data, list) else [data])]
    usable = [item for item in results if isinstance(item, dict) and "checkpoint" in item]
    if not usable:
        raise BadInputError(f"--resume-costs {path}: no `imagine bench engine --json` result")
    return ResumeCosts.from_engine_json(usable)
