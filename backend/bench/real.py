"""``imagine bench scheduler --real``: a short trace through the real service, worker and
engine (the tiny model, on the CPU), reporting the scheduler's own time per step.

Each trace job becomes a small real job of the same shape class, so a run takes seconds:

* sides divided by ``SIZE_DIVISOR`` and snapped to the 64-pixel grid the model needs,
  within ``MIN_SIDE_PX``..``MAX_SIDE_PX`` (512 px becomes 64, 1024 px becomes 128);
* steps divided by ``STEPS_DIVISOR``, rounded up, at least ``MIN_STEPS`` (4 becomes 2,
  50 becomes 10), so every job crosses a step boundary;
* samples kept, capped so that a guided job fits ``engine.max_batch_rows``;
* arrival times multiplied by ``time_scale``.

The lane thresholds are moved onto the small jobs' costs so that each job keeps the lane
its trace shape gets with the configured settings (``lane_mismatches`` counts the jobs
no threshold could keep), and the lanes' wait bounds are scaled by ``time_scale`` like
the arrivals. Admission limits are lifted, as in the simulation, so every trace job
enters; the queue is in memory and the database and images live in a temporary folder
removed afterwards. The tiny model comes from ``engine.models.tiny`` when that is a
built copy, else it is built once under the data directory's models folder.

Figures: ``overhead_ms`` is the worker's time at each step boundary spent deciding
(peeking at the most urgent waiting job, choosing preemption victims, issuing
evictions); ``steps`` counts the step boundaries; waits run from submission to a job's
first step, in the run's own (scaled) seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.bench.trace import TraceJob
from backend.catalog import ModelCatalog
from backend.errors import BackendError, BadInputError, RefusedError
from backend.events.base import EventKind, Subscription
from backend.models import SIZE_MULTIPLE, JobSpec, Lane
from backend.scheduling.fairness import LANE_ORDER
from backend.scheduling.lanes import CostModel, StepModel, lane_by_cost, rows_for
from backend.stats import percentile
from config.settings import (
    BUILTIN_TINY,
    ModelSettings,
    QueueBackend,
    QueueSettings,
    SchedulerSettings,
    Settings,
)

if TYPE_CHECKING:
    from backend.app import Backend

REAL_JOBS = 40
# A trace second lasts 50 ms: the default trace then replays in about ten seconds and
# asks a little more of the tiny model on two CPU cores than they give, so jobs queue,
# share steps and get preempted, as on a loaded device.
TIME_SCALE = 0.05
TIMEOUT_S = 300.0
SIZE_DIVISOR = 8
MIN_SIDE_PX = SIZE_MULTIPLE
MAX_SIDE_PX = 2 * SIZE_MULTIPLE
STEPS_DIVISOR = 5
MIN_STEPS = 2
MODEL = "tiny"
PROMPT = "a lighthouse at dusk, oil painting"
OVERHEAD_P99_TARGET_MS = 1.0
# Admission is not what this run measures: limits no trace reaches.
UNLIMITED_PER_MIN = 1e9
UNLIMITED_QUEUED = 100_000


@dataclass(frozen=True, slots=True)
class RealJob:
    """A trace job and the small real job that stands in for it."""

    trace: TraceJob
    spec: JobSpec
    user_id: int


def scaled_side(px: int) -> int:
    """A trace side in pixels as the real run's side (see the module's docstring)."""
    side = round(px / SIZE_DIVISOR / SIZE_MULTIPLE) * SIZE_MULTIPLE
    return min(MAX_SIDE_PX, max(MIN_SIDE_PX, side))


def scaled_steps(steps: int) -> int:
    """A trace job's step count as the real run's (see the module's docstring)."""
    return max(MIN_STEPS, math.ceil(steps / STEPS_DIVISOR))


def real_jobs(trace: Sequence[TraceJob], max_batch_rows: int) -> list[RealJob]:
    """The real job of every trace job; users get database ids 1, 2, ... by first arrival."""
    user_ids: dict[str, int] = {}
    max_n = max(1, max_batch_rows // rows_for(1, None))
    jobs = []
    for item in trace:
        spec = JobSpec(
            prompt=f"{PROMPT} {item.index}",
            seed=item.index + 1,
            width=scaled_side(item.width),
            height=scaled_side(item.height),
            steps=scaled_steps(item.steps),
            speed=item.speed,
            model=MODEL,
            n=min(item.n, max_n),
        )
        jobs.append(RealJob(item, spec, user_ids.setdefault(item.user, len(user_ids) + 1)))
    return jobs


# -- settings of the run -----------------------------------------------------------------


def bench_settings(
    settings: Settings, data_dir: Path, jobs: Sequence[RealJob], *, time_scale: float
) -> tuple[Settings, int]:
    """The settings the run uses, and how many jobs land in another lane than their
    trace shape would (see the module's docstring for what changes)."""
    engine = settings.engine
    tiny = engine.models.get(MODEL) or ModelSettings(source=BUILTIN_TINY)
    tiny = tiny.model_copy(update={"source": tiny_model_source(settings)})
    scheduler, mismatches = _moved_lanes(settings, jobs)
    scheduler = scheduler.model_copy(
        update={
            "realtime_max_wait_s": scheduler.realtime_max_wait_s * time_scale,
            "batch_max_wait_s": scheduler.batch_max_wait_s * time_scale,
            "background_max_wait_s": scheduler.background_max_wait_s * time_scale,
            "tiers": {
                name: tier.model_copy(
                    update={
                        "rate_per_min": UNLIMITED_PER_MIN,
                        "burst": None,
                        "max_queued": UNLIMITED_QUEUED,
                    }
                )
                for name, tier in scheduler.tiers.items()
            },
        }
    )
    admission = settings.admission.model_copy(
        update={"guild_per_min": UNLIMITED_PER_MIN, "global_per_min": UNLIMITED_PER_MIN}
    )
    updated = settings.model_copy(
        update={
            "data_dir": data_dir,
            "queue": QueueSettings(backend=QueueBackend.MEMORY),
            "engine": engine.model_copy(
                update={"device": "cpu", "models": {**engine.models, MODEL: tiny}}
            ),
            "scheduler": scheduler,
            "admission": admission,
        }
    )
    return updated, mismatches


def tiny_model_source(settings: Settings) -> str:
    """The configured tiny model if it is a built copy, else the one under the data
    directory (built there on first use, as the engine does)."""
    from backend.engine.tiny import ensure_tiny_model, is_complete

    model = settings.engine.models.get(MODEL)
    if model is not None and not ModelCatalog.is_builtin(model) and is_complete(Path(model.source)):
        return model.source
    return str(ensure_tiny_model(settings.models_dir))


def _moved_lanes(settings: Settings, jobs: Sequence[RealJob]) -> tuple[SchedulerSettings, int]:
    """Lane thresholds over the real jobs' costs that keep each job's lane by cost."""
    scheduler = settings.scheduler
    cost = CostModel(StepModel.from_settings(scheduler))
    guidance = settings.engine.models.get(
        MODEL, ModelSettings(source=BUILTIN_TINY)
    ).default_guidance
    traced: list[tuple[Lane, float]] = []
    for job in jobs:
        item, spec = job.trace, job.spec
        original = cost.job_cost_s(
            MODEL,
            steps=item.steps,
            rows=rows_for(item.n, guidance),
            width=item.width,
            height=item.height,
        )
        assert spec.steps is not None
        small = cost.job_cost_s(
            MODEL,
            steps=spec.steps,
            rows=rows_for(spec.n, guidance),
            width=spec.width,
            height=spec.height,
        )
        traced.append((lane_by_cost(original, scheduler), small))
    realtime = separating_cost(
        [c for lane, c in traced if lane is Lane.REALTIME],
        [c for lane, c in traced if lane is not Lane.REALTIME],
    )
    batch = separating_cost(
        [c for lane, c in traced if lane is not Lane.BACKGROUND],
        [c for lane, c in traced if lane is Lane.BACKGROUND],
    )
    moved = scheduler.model_copy(
        update={"realtime_max_cost_s": realtime, "batch_max_cost_s": max(batch, 2 * realtime)}
    )
    mismatches = sum(lane_by_cost(c, moved) is not lane for lane, c in traced)
    return moved, mismatches


def separating_cost(below: Sequence[float], above: Sequence[float]) -> float:
    """A threshold with as many of ``below`` at or under it, and of ``above`` over it,
    as any threshold has; midway (geometrically) between the neighbouring costs."""
    values = sorted({*below, *above})
    if not values:
        return 1.0
    low, high = sorted(below), sorted(above)
    # Cut after index i: errors are the below-costs over values[i] and the above-costs
    # at or under it; i = -1 cuts under everything.
    best_i, best_errors = -1, len(low)
    for i, value in enumerate(values):
        errors = len(low) - bisect.bisect_right(low, value) + bisect.bisect_right(high, value)
        if errors < best_errors:
            best_i, best_errors = i, errors
    if best_i < 0:
        return values[0] / 2
    if best_i == len(values) - 1:
        return values[-1] * 2
    return math.sqrt(values[best_i] * values[best_i + 1])


# -- the run ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """What one job's events said."""

    lane: Lane
    submitted_ms: int
    started_ms: int | None = None
    finished_ms: int | None = None
    final: EventKind | None = None
    preemptions: int = 0


@dataclass(slots=True)
class _WorkerMark:
    """Where the workers' counters stood when the trace started."""

    boundaries: int
    samples: int


def run_real(
    settings: Settings,
    trace: Sequence[TraceJob],
    *,
    time_scale: float = TIME_SCALE,
    timeout_s: float = TIMEOUT_S,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay ``trace`` through the real backend and return the result object (the
    shape ``--json`` prints). Raises BackendError when jobs are still unfinished
    ``timeout_s`` after the last arrival."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise BadInputError(f"--time-scale must be a finite number > 0, got {time_scale}")
    if not trace:
        raise BadInputError("the trace holds no jobs")
    jobs = real_jobs(trace, settings.engine.max_batch_rows)
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as data_dir:
        bench, mismatches = bench_settings(settings, Path(data_dir), jobs, time_scale=time_scale)
        result = asyncio.run(_replay(bench, jobs, time_scale, timeout_s, say))
    result["lane_mismatches"] = mismatches
    return result


async def _replay(
    settings: Settings,
    jobs: Sequence[RealJob],
    time_scale: float,
    timeout_s: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    from backend.app import open_backend

    async with open_backend(settings, local_worker=True) as backend:
        for job in jobs:
            await backend.db.users.set_tier(job.user_id, job.trace.tier)
        await _warm_up(backend)
        mark = [_WorkerMark(w.boundaries, len(w.overhead_s)) for w in backend.workers]
        say(f"replaying {len(jobs)} jobs at {time_scale:g} s per trace second")
        started = time.perf_counter()
        seen, refused, followers = await _submit_all(backend, jobs, time_scale)
        if followers:
            _, pending = await asyncio.wait(followers, timeout=timeout_s)
            if pending:
                for task in pending:
                    task.cancel()
                raise BackendError(
                    f"{len(pending)} of {len(followers)} jobs unfinished {timeout_s:g} s "
                    "after the last arrival"
                )
        wall_s = time.perf_counter() - started
        steps = sum(w.boundaries - m.boundaries for w, m in zip(backend.workers, mark, strict=True))
        overhead_s = [
            sample
            for w, m in zip(backend.workers, mark, strict=True)
            for sample in list(w.overhead_s)[m.samples :]
        ]
    say(f"finished in {wall_s:.1f} s")
    return _result(jobs, seen, refused, wall_s, steps, overhead_s, time_scale)


async def _warm_up(backend: Backend) -> None:
    """One untimed job first, so the first trace job does not wait for the model to load."""
    service = backend.service
    job_id = service.new_job_id()
    subscription = service.follow(job_id)
    spec = JobSpec(prompt=PROMPT, seed=0, width=MIN_SIDE_PX, height=MIN_SIDE_PX, model=MODEL, n=1)
    await service.submit(spec, user_id=0, job_id=job_id)
    await service.wait(subscription)


async def _submit_all(
    backend: Backend, jobs: Sequence[RealJob], time_scale: float
) -> tuple[dict[str, _Seen], int, list[asyncio.Task[None]]]:
    """Submit each job at its scaled trace time, following its events from the start."""
    service = backend.service
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: dict[str, _Seen] = {}
    followers: list[asyncio.Task[None]] = []
    refused = 0
    for job in jobs:
        delay = start + job.trace.t_s * time_scale - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        job_id = service.new_job_id()
        subscription = service.follow(job_id)
        try:
            submitted = await service.submit(job.spec, user_id=job.user_id, job_id=job_id)
        except RefusedError:
            subscription.close()
            refused += 1
            continue
        seen[job_id] = _Seen(submitted.lane, submitted.submitted_at_ms)
        followers.append(asyncio.create_task(_follow(subscription, seen[job_id])))
    return seen, refused, followers


async def _follow(subscription: Subscription, seen: _Seen) -> None:
    # Only what the figures need: first start, preemptions, the final outcome.
    async for event in subscription:
        if event.kind is EventKind.STARTED and seen.started_ms is None:
            seen.started_ms = event.at_ms
        elif event.kind is EventKind.PREEMPTED:
            seen.preemptions += 1
        elif event.kind.is_final:
            seen.final = event.kind
            seen.finished_ms = event.at_ms


# -- the result -------------------------------------------------------------------------


def _result(
    jobs: Sequence[RealJob],
    seen: dict[str, _Seen],
    refused: int,
    wall_s: float,
    steps: int,
    overhead_s: Sequence[float],
    time_scale: float,
) -> dict[str, Any]:
    overhead_ms = [sample * 1000 for sample in overhead_s]
    p99 = round(percentile(overhead_ms, 99), 4) if overhead_ms else None
    lanes: dict[str, Any] = {}
    for lane in LANE_ORDER:
        waits = [
            (s.started_ms - s.submitted_ms) / 1000
            for s in seen.values()
            if s.lane is lane and s.started_ms is not None
        ]
        if waits:
            lanes[lane.value] = {
                "jobs": len(waits),
                "p50_wait_s": round(percentile(waits, 50), 3),
                "p99_wait_s": round(percentile(waits, 99), 3),
            }
    return {
        "mode": "real",
        "jobs": len(jobs),
        "succeeded": sum(s.final is EventKind.SUCCEEDED for s in seen.values()),
        "failed": sum(s.final is EventKind.FAILED for s in seen.values()),
        "refused": refused,
        "time_scale": time_scale,
        "wall_s": round(wall_s, 3),
        "steps": steps,
        "overhead_ms": {
            "p50": round(percentile(overhead_ms, 50), 4) if overhead_ms else None,
            "p99": p99,
            "max": round(max(overhead_ms), 4) if overhead_ms else None,
            "samples": len(overhead_ms),
        },
        # The worker does not time its claims; open_backend gives no way to wrap its queue.
        "claim_ms": None,
        "lanes": lanes,
        "preemptions": sum(s.preemptions for s in seen.values()),
        "targets": {
            "overhead_p99_ms": {
                "value": p99,
                "target": f"<= {OVERHEAD_P99_TARGET_MS}",
                "ok": p99 is not None and p99 <= OVERHEAD_P99_TARGET_MS,
            }
        },
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The real run's figures as a short markdown table."""
    overhead = result["overhead_ms"]
    target = result["targets"]["overhead_p99_ms"]
    rows = [
        ("jobs (succeeded / failed / refused)", _jobs_cell(result)),
        ("wall time s", _cell(result["wall_s"])),
        ("steps", _cell(result["steps"])),
        ("scheduler overhead per step ms, p50", _cell(overhead["p50"])),
        ("scheduler overhead per step ms, p99", _cell(overhead["p99"])),
        ("scheduler overhead per step ms, max", _cell(overhead["max"])),
        ("preemptions", _cell(result["preemptions"])),
    ]
    for lane, figures in result["lanes"].items():
        rows.append(
            (
                f"{lane} wait s, p50 / p99 ({figures['jobs']} jobs)",
                f"{_cell(figures['p50_wait_s'])} / {_cell(figures['p99_wait_s'])}",
            )
        )
    verdict = "ok" if target["ok"] else "FAIL"
    rows.append((f"target: overhead p99 ms {target['target']}", verdict))
    lines = ["| figure | value |", "|---|--:|", *(f"| {name} | {value} |" for name, value in rows)]
    return f"Scheduler on the real engine ({MODEL} model, CPU).\n\n" + "\n".join(lines) + "\n"


def _jobs_cell(result: dict[str, Any]) -> str:
    return f"{result['jobs']} ({result['succeeded']} / {result['failed']} / {result['refused']})"


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
