"""The worker drives preemption at step boundaries: a more urgent job takes the device
from a less urgent one, which resumes from its checkpoint; anti-thrashing holds.

A step-timed fake engine stands in for the device (same admission rules as the real
one: one shape at a time, submission order), so the tests are about the decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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


@pytest.fixture
def rules() -> Rules:
    return Rules(enabled=True, min_steps=2, max_per_job=10)


@pytest.fixture
async def rig(tmp_path: Path, rules: Rules) -> AsyncIterator[Rig]:
    settings = load_settings()
    catalog = ModelCatalog(settings)
    queue = MemoryQueue()
    events = LocalEventBus()
    async with Database.open(tmp_path / "jobs.db") as db:
        service = GenerationService(settings.scheduler, settings.engine, db, queue, catalog, events)
        config = WorkerConfig("w1", lease_s=5.0, poll_s=0.02, preemption=rules)
        ledger = SqliteLedger(db, ImageStore(tmp_path / "img"))
        worker = DeviceWorker(config, queue, StepTimedEngine, catalog, ledger, events)
        await db.users.ensure(1)
        await db.users.set_tier(1, "admin")
        async with worker:
            yield Rig(settings, service, worker, events, db)


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


async def start_long(rig: Rig) -> str:
    subscription = rig.events.subscribe(None)
    job = await rig.service.submit(long_job(), user_id=1)
    assert job.lane is Lane.BACKGROUND
    async with asyncio.timeout(5):
        async for event in subscription:
            if event.job_id == job.id and event.kind is EventKind.STEP and event.step >= 4:
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


@pytest.mark.parametrize("rules", [Rules(enabled=False, min_steps=2, max_per_job=10)])
async def test_no_preemption_when_disabled(rig: Rig) -> None:
    """With preemption off, the realtime job waits for the background job to finish."""
    long_id = await start_long(rig)
    follow = asyncio.create_task(events_of(rig, {long_id}))
    await asyncio.sleep(0)
    short = await rig.service.submit(short_job(), user_id=1)
    events = await follow + await events_of(rig, {short.id})
    assert not any(e.kind is EventKind.PREEMPTED for e in events)
    assert rig.worker.preemptions == 0
    assert started_after_finish(events, short.id, long_id)


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
