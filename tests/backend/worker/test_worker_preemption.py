"""The worker drives preemption at step boundaries: a more urgent job takes the device
from a less urgent one, which is paused in place (while the pause room lasts) or
evicted and resumes from its checkpoint; anti-thrashing holds.

A step-timed fake engine stands in for the device (same admission rules as the real
one: one shape at a time, submission order), so the tests are about the decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.catalog import ModelCatalog
from backend.events.base import EventKind, JobEvent
from backend.events.memory import LocalEventBus
from backend.models import JobSpec, Lane, Speed
from backend.queue.memory import MemoryQueue
from backend.scheduling.preemption import Rules
from backend.service import GenerationService
from backend.worker.ledger.sqlite import SqliteLedger
from backend.worker.worker import DeviceWorker, WorkerConfig
from config.settings import Settings, load_settings
from storage.db import Database
from storage.images import ImageStore
from tests.fakes import STEP_S, StepTimedEngine


@dataclass
class Rig:
    settings: Settings
    service: GenerationService
    worker: DeviceWorker
    events: LocalEventBus
    db: Database
    queue: MemoryQueue


@pytest.fixture
def rules() -> Rules:
    return Rules(enabled=True, min_steps=2, max_per_job=10)


@pytest.fixture
def pause_rows() -> int:
    return 0


@pytest.fixture
def joins() -> Callable[[Hashable, int, int], bool] | None:
    return None


@pytest.fixture
async def rig(
    tmp_path: Path,
    rules: Rules,
    pause_rows: int,
    joins: Callable[[Hashable, int, int], bool] | None,
) -> AsyncIterator[Rig]:
    settings = load_settings()
    catalog = ModelCatalog(settings)
    queue = MemoryQueue()
    events = LocalEventBus()
    async with Database.open(tmp_path / "jobs.db") as db:
        service = GenerationService(settings.scheduler, settings.engine, db, queue, catalog, events)
        config = WorkerConfig(
            "w1", lease_s=5.0, poll_s=0.02, preemption=rules, pause_rows=pause_rows, joins=joins
        )
        ledger = SqliteLedger(db, ImageStore(tmp_path / "img"))
        worker = DeviceWorker(config, queue, StepTimedEngine, catalog, ledger, events)
        await db.users.ensure(1)
        await db.users.set_tier(1, "admin")
        async with worker:
            yield Rig(settings, service, worker, events, db, queue)


def long_job() -> JobSpec:
    return JobSpec(prompt="slow", seed=1, width=128, height=128, n=1, steps=60, speed=Speed.RELAX)


def short_job(seed: int = 2) -> JobSpec:
    return JobSpec(prompt="quick", seed=seed, width=64, height=64, n=1, steps=3)


async def events_of(rig: Rig, job_ids: set[str]) -> list[JobEvent]:
    """Every event of ``job_ids`` until all of them are final."""
    seen: list[JobEvent] = []
    finals: set[str] = set()
    subscription = rig.events.subscribe(None)
    async with asyncio.timeout(10):
        async for event in subscription:
            if event.job_id in job_ids:
                seen.append(event)
                if event.kind.is_final:
                    finals.add(event.job_id)
                if finals == job_ids:
                    break
    subscription.close()
    return seen


async def start_long(
    rig: Rig, job_spec: JobSpec | None = None, lane: Lane = Lane.BACKGROUND
) -> str:
    """Submit a long job (by default a relax one) and return once it ran 4 steps."""
    subscription = rig.events.subscribe(None)
    job = await rig.service.submit(job_spec or long_job(), user_id=1)
    assert job.lane is lane
    async with asyncio.timeout(5):
        async for event in subscription:
            if event.job_id == job.id and event.kind is EventKind.STEP and event.step >= 4:
                break
    subscription.close()
    return job.id


async def until_paused(rig: Rig, job_id: str, *, submit: JobSpec) -> str:
    """Submit ``submit`` and return its id once ``job_id`` was paused for it."""
    subscription = rig.events.subscribe(None)
    job = await rig.service.submit(submit, user_id=1)
    async with asyncio.timeout(5):
        async for event in subscription:
            if event.job_id == job_id and event.kind is EventKind.PREEMPTED:
                break
    subscription.close()
    return job.id


async def test_urgent_job_takes_the_device_and_the_evicted_one_resumes(rig: Rig) -> None:
    """A realtime job of another shape evicts a running background job at a step
    boundary, starts before it finishes; the background job resumes from its step."""
    long_id = await start_long(rig)
    follow = asyncio.create_task(events_of(rig, {long_id}))
    await asyncio.sleep(0)
    short = await rig.service.submit(short_job(), user_id=1)
    assert short.lane is Lane.REALTIME
    events = await follow
    kinds = [(e.job_id, e.kind) for e in events]
    assert (long_id, EventKind.PREEMPTED) in kinds
    preempted_at = next(e.step for e in events if e.kind is EventKind.PREEMPTED)
    cut = kinds.index((long_id, EventKind.PREEMPTED))
    resumed = [e.step for e in events[cut:] if e.kind is EventKind.STEP]
    assert resumed[0] == preempted_at + 1
    assert kinds[-1] == (long_id, EventKind.SUCCEEDED)
    short_row = await rig.db.jobs.get(short.id)
    long_row = await rig.db.jobs.get(long_id)
    assert short_row is not None and long_row is not None
    assert short_row.state == "succeeded" and short_row.finished_at_ms is not None
    assert long_row.finished_at_ms is not None
    assert short_row.finished_at_ms < long_row.finished_at_ms
    assert long_row.attempts == 2
    assert rig.worker.preemptions >= 1


def started_after_finish(events: list[JobEvent], late: str, early: str) -> bool:
    """Whether ``late`` started on the device only after ``early`` succeeded."""
    kinds = [(e.job_id, e.kind) for e in events]
    return kinds.index((late, EventKind.STARTED)) > kinds.index((early, EventKind.SUCCEEDED))


async def beside_long(rig: Rig, spec: JobSpec) -> tuple[str, str, list[JobEvent]]:
    """Start a long background job, submit ``spec`` while it runs, and return both ids
    and every event of the two (followed from before the submission) until both end."""
    long_id = await start_long(rig)
    job_id = rig.service.new_job_id()
    follow = asyncio.create_task(events_of(rig, {long_id, job_id}))
    await asyncio.sleep(0)
    await rig.service.submit(spec, user_id=1, job_id=job_id)
    return long_id, job_id, await follow


@pytest.mark.parametrize("rules", [Rules(enabled=False, min_steps=2, max_per_job=10)])
async def test_no_preemption_when_disabled(rig: Rig) -> None:
    """With preemption off, the realtime job waits for the background job to finish."""
    long_id, short_id, events = await beside_long(rig, short_job())
    assert not any(e.kind is EventKind.PREEMPTED for e in events)
    assert rig.worker.preemptions == 0
    assert started_after_finish(events, short_id, long_id)


@pytest.mark.parametrize("rules", [Rules(enabled=True, min_steps=2, max_per_job=1)])
async def test_a_job_is_preempted_at_most_max_per_job_times(rig: Rig) -> None:
    """Once preempted ``max_per_job`` times, a job keeps the device against newcomers."""
    long_id = await start_long(rig)
    follow = asyncio.create_task(events_of(rig, {long_id}))
    await asyncio.sleep(0)
    first = rig.service.new_job_id()
    follow_first = asyncio.create_task(events_of(rig, {first}))
    await asyncio.sleep(0)
    await rig.service.submit(short_job(2), user_id=1, job_id=first)
    await follow_first
    # Let the background job resume and run past min_steps before the next newcomer.
    await asyncio.sleep(10 * STEP_S)
    second = rig.service.new_job_id()
    follow_second = asyncio.create_task(events_of(rig, {second}))
    await asyncio.sleep(0)
    await rig.service.submit(short_job(3), user_id=1, job_id=second)
    events = await follow
    assert sum(e.kind is EventKind.PREEMPTED for e in events) == 1
    events += await follow_second
    assert started_after_finish(events, second, long_id)


@pytest.mark.parametrize("rules", [Rules(enabled=True, min_steps=1000, max_per_job=10)])
async def test_min_steps_protects_a_freshly_started_job(rig: Rig) -> None:
    """A job that has not run ``min_steps`` since it started is not evicted."""
    long_id = await start_long(rig)
    short = await rig.service.submit(short_job(), user_id=1)
    events = await events_of(rig, {long_id, short.id})
    assert not any(e.kind is EventKind.PREEMPTED for e in events)


async def test_scheduling_overhead_is_measured_per_boundary(rig: Rig) -> None:
    """Every step boundary with work running records the time spent deciding."""
    job = await rig.service.submit(short_job(), user_id=1)
    await events_of(rig, {job.id})
    assert rig.worker.boundaries >= 2
    assert 1 <= len(rig.worker.overhead_s) <= rig.worker.boundaries
    assert all(0 <= seconds < 1 for seconds in rig.worker.overhead_s)


@pytest.mark.parametrize("pause_rows", [16])
async def test_urgent_job_pauses_the_running_one_in_place(rig: Rig) -> None:
    """With pause room, the background job is set aside on the device instead of
    evicted: the realtime job runs and finishes first, the background job resumes at
    the next step without going back to the queue (one attempt, no checkpoint)."""
    long_id = await start_long(rig)
    follow = asyncio.create_task(events_of(rig, {long_id}))
    await asyncio.sleep(0)
    short = await rig.service.submit(short_job(), user_id=1)
    events = await follow
    kinds = [(e.job_id, e.kind) for e in events]
    paused_at = next(e.step for e in events if e.kind is EventKind.PREEMPTED)
    cut = kinds.index((long_id, EventKind.PREEMPTED))
    resumed = [e.step for e in events[cut:] if e.kind is EventKind.STEP]
    assert resumed[0] == paused_at + 1
    long_row = await rig.db.jobs.get(long_id)
    short_row = await rig.db.jobs.get(short.id)
    assert long_row is not None and short_row is not None
    assert short_row.state == "succeeded" and long_row.state == "succeeded"
    assert short_row.finished_at_ms is not None and long_row.finished_at_ms is not None
    assert short_row.finished_at_ms < long_row.finished_at_ms
    assert long_row.attempts == 1
    assert rig.worker.pauses >= 1 and rig.worker.preemptions == 0


@pytest.mark.parametrize("pause_rows", [16])
@pytest.mark.parametrize(
    "rules", [Rules(enabled=True, min_steps=2, max_per_job=10, size_ratio=4.0)]
)
async def test_a_much_smaller_job_of_the_same_lane_takes_the_device(rig: Rig) -> None:
    """Within one lane, a job with at most a quarter of the running one's remaining
    work goes first; the running job is paused and finishes after it."""
    long_spec = JobSpec(prompt="slow", seed=1, width=128, height=128, n=1, steps=60)
    long_id = await start_long(rig, long_spec, Lane.REALTIME)
    follow = asyncio.create_task(events_of(rig, {long_id}))
    await asyncio.sleep(0)
    short = await rig.service.submit(short_job(), user_id=1)
    assert short.lane is Lane.REALTIME
    events = await follow
    assert any(e.kind is EventKind.PREEMPTED for e in events)
    short_row = await rig.db.jobs.get(short.id)
    long_row = await rig.db.jobs.get(long_id)
    assert short_row is not None and long_row is not None
    assert short_row.finished_at_ms is not None and long_row.finished_at_ms is not None
    assert short_row.finished_at_ms < long_row.finished_at_ms


@pytest.mark.parametrize("pause_rows", [16])
async def test_a_paused_job_is_checkpointed_and_requeued_at_shutdown(rig: Rig) -> None:
    """Closing the worker while a job is paused evicts it with its checkpoint: the job
    goes back to the queue, nothing is lost."""
    long_id = await start_long(rig)
    busy = JobSpec(prompt="quick", seed=5, width=64, height=64, n=1, steps=400)
    await until_paused(rig, long_id, submit=busy)
    await rig.worker.close(drain_s=0.0)
    row = await rig.db.jobs.get(long_id)
    assert row is not None and row.state == "queued"
    assert await rig.db.jobs.checkpoint(long_id) is not None


@pytest.mark.parametrize("pause_rows", [16])
async def test_a_paused_job_can_be_cancelled(rig: Rig) -> None:
    """Cancelling a paused job ends it as cancelled; the job it made way for goes on."""
    long_id = await start_long(rig)
    short_id = await until_paused(rig, long_id, submit=short_job())
    follow = asyncio.create_task(events_of(rig, {long_id, short_id}))
    await asyncio.sleep(0)
    assert rig.worker.cancel(long_id)
    events = await follow
    finals = {e.job_id: e.kind for e in events if e.kind.is_final}
    assert finals == {long_id: EventKind.CANCELLED, short_id: EventKind.SUCCEEDED}


@pytest.mark.parametrize("pause_rows", [16])
async def test_a_paused_job_does_not_hold_its_users_running_slot(rig: Rig) -> None:
    """While a job is paused in place the queue counts it out of its user's running
    cap, and back in once it runs again; when it finishes the count is balanced."""
    long_id = await start_long(rig)
    await rig.db.users.ensure(2)
    user = "1"
    assert rig.queue._fair.running(user) == 1
    follow = asyncio.create_task(events_of(rig, {long_id}))
    await asyncio.sleep(0)
    await rig.service.submit(short_job(), user_id=2)
    seen: list[int] = []
    while not follow.done():
        seen.append(rig.queue._fair.running(user))
        await asyncio.sleep(STEP_S / 2)
    events = await follow
    assert any(e.kind is EventKind.PREEMPTED for e in events)
    assert 0 in seen and seen[-1] == 1  # counted out while paused, back in after
    assert rig.queue._fair.running(user) == 0


def never_pays(shape: Hashable, running_rows: int, rows: int) -> bool:
    return False


def relax_twin(seed: int) -> JobSpec:
    """A background job of the long job's shape, short enough to finish quickly."""
    return JobSpec(prompt="twin", seed=seed, width=128, height=128, n=1, steps=5, speed=Speed.RELAX)


def started_before_finish(events: list[JobEvent], late: str, early: str) -> bool:
    """Whether ``late`` started on the device before ``early`` succeeded."""
    kinds = [(e.job_id, e.kind) for e in events]
    return kinds.index((late, EventKind.STARTED)) < kinds.index((early, EventKind.SUCCEEDED))


@pytest.mark.parametrize("rules", [Rules(enabled=False, min_steps=2, max_per_job=10)])
@pytest.mark.parametrize("joins", [never_pays])
async def test_background_work_waits_for_a_batch_that_would_not_gain_by_growing(
    rig: Rig,
) -> None:
    """While batching would not pay, a background job of the running batch's shape is
    left queued (for another device, or this one once its batch ends); a realtime job
    of that shape still joins at once."""
    long_id = await start_long(rig)
    twin_id, urgent_id = rig.service.new_job_id(), rig.service.new_job_id()
    follow = asyncio.create_task(events_of(rig, {long_id, twin_id, urgent_id}))
    await asyncio.sleep(0)
    twin = await rig.service.submit(relax_twin(5), user_id=1, job_id=twin_id)
    assert twin.lane is Lane.BACKGROUND
    await asyncio.sleep(10 * STEP_S)
    assert await rig.queue.depth(Lane.BACKGROUND) == 1  # still queued, not held here
    urgent = await rig.service.submit(
        JobSpec(prompt="now", seed=6, width=128, height=128, n=1, steps=3),
        user_id=1,
        job_id=urgent_id,
    )
    assert urgent.lane is Lane.REALTIME
    events = await follow
    assert started_before_finish(events, urgent_id, long_id)
    assert started_after_finish(events, twin_id, long_id)


@pytest.mark.parametrize("rules", [Rules(enabled=False, min_steps=2, max_per_job=10)])
async def test_background_work_joins_a_batch_whenever_it_fits_by_default(rig: Rig) -> None:
    """Without a batching rule, a background job of the running shape joins at once."""
    long_id, twin_id, events = await beside_long(rig, relax_twin(7))
    assert started_before_finish(events, twin_id, long_id)
