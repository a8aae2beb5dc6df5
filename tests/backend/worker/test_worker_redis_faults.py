"""The worker in Redis mode against a private redis-server that the tests stop and start:
shutdown always ends within its bound, an outage shorter than the lease goes unnoticed
by the job, a longer one sends the job back with its checkpoint to resume from.

The step-timed fake engine stands in for the device; the queue and SQLite are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from backend.catalog import ModelCatalog
from backend.events.base import EventKind, JobEvent, Subscription
from backend.events.memory import LocalEventBus
from backend.models import JobSpec
from backend.queue.redis import RedisQueue
from backend.scheduling.preemption import Rules
from backend.service import GenerationService
from backend.worker.ledger.sqlite import SqliteLedger
from backend.worker.worker import DeviceWorker, WorkerConfig
from config.settings import load_settings
from storage.db import Database
from storage.images import ImageStore
from tests.backend.worker.conftest import events_until_final, eventually
from tests.fakes import StepTimedEngine
from tests.redis_server import PrivateRedis

# Bounds that detect a hang; a healthy run takes a fraction of them.
BOUND_S = 10.0
# close(drain_s=0) evicts at the next step boundary and gives up on an unreachable queue
# within seconds; past this it hangs.
CLOSE_BOUND_S = 8.0


@dataclass
class Rig:
    service: GenerationService
    worker: DeviceWorker
    events: LocalEventBus
    db: Database
    queue: RedisQueue
    ledger: SqliteLedger


@contextlib.asynccontextmanager
async def open_rig(
    tmp_path: Path,
    redis: PrivateRedis,
    *,
    lease_s: float,
    step_s: float = 0.01,
    joins: Callable[[Hashable, int, int], bool] | None = None,
) -> AsyncIterator[Rig]:
    settings = load_settings()
    catalog = ModelCatalog(settings)
    queue = RedisQueue.from_url(redis.url, namespace="worker-faults")
    events = LocalEventBus()
    try:
        async with Database.open(tmp_path / "jobs.db") as db:
            service = GenerationService(
                settings.scheduler, settings.engine, db, queue, catalog, events
            )
            ledger = SqliteLedger(db, ImageStore(tmp_path / "img"))
            rules = Rules(enabled=False, min_steps=2, max_per_job=10)
            config = WorkerConfig("w1", rules, lease_s=lease_s, poll_s=0.05, joins=joins)
            engine = functools.partial(StepTimedEngine, step_s=step_s)
            worker = DeviceWorker(config, queue, engine, catalog, ledger, events)
            await db.users.ensure(1)
            await db.users.set_tier(1, "admin")
            worker.start()
            try:
                yield Rig(service, worker, events, db, queue, ledger)
            finally:
                await _close_within_bound(worker)
    finally:
        await queue.close()


async def _close_within_bound(worker: DeviceWorker, drain_s: float = 0.0) -> None:
    closing = asyncio.create_task(worker.close(drain_s=drain_s))
    done, _ = await asyncio.wait({closing}, timeout=CLOSE_BOUND_S)
    assert closing in done, f"close(drain_s={drain_s}) still running after {CLOSE_BOUND_S} s"
    closing.result()


def long_job(steps: int) -> JobSpec:
    return JobSpec(prompt="a long night", seed=3, width=64, height=64, n=1, steps=steps)


async def start_job(rig: Rig, steps: int, *, at_step: int = 1) -> tuple[str, Subscription]:
    """Submit a job and return once it reached ``at_step``, with its subscription."""
    job_id = rig.service.new_job_id()
    subscription = rig.service.follow(job_id)
    watch = rig.events.subscribe(None)
    await rig.service.submit(long_job(steps), user_id=1, job_id=job_id)
    async with asyncio.timeout(BOUND_S):
        async for event in watch:
            if event.job_id == job_id and event.kind is EventKind.STEP and event.step >= at_step:
                break
    watch.close()
    return job_id, subscription


def steps_after_preemption(events: list[JobEvent]) -> list[int]:
    """The steps reported after the job's (first) preemption."""
    kinds = [event.kind for event in events]
    assert EventKind.PREEMPTED in kinds
    after = events[kinds.index(EventKind.PREEMPTED) :]
    return [event.step for event in after if event.kind is EventKind.STEP]


async def test_close_in_redis_mode_ends_within_its_bound(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """close(drain_s=0) mid-job ends within seconds and leaves the job queued in Redis
    and in SQLite, with its checkpoint."""
    async with open_rig(tmp_path, private_redis, lease_s=5.0) as rig:
        job_id, _ = await start_job(rig, steps=2000, at_step=3)
        await _close_within_bound(rig.worker)
        row = await rig.db.jobs.get(job_id)
        assert row is not None and row.state == "queued"
        assert await rig.ledger.checkpoint(job_id)
        lease = await rig.queue.claim("inspector", lease_s=5.0)
        assert lease is not None and lease.job.id == job_id and lease.checkpoint


async def test_close_ends_within_its_bound_when_redis_is_gone(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """With Redis stopped mid-job, close(drain_s=0) still ends within seconds, and SQLite
    keeps the job with its checkpoint to be reconciled."""
    async with open_rig(tmp_path, private_redis, lease_s=5.0) as rig:
        job_id, _ = await start_job(rig, steps=2000, at_step=3)
        private_redis.stop(keep_data=True)
        await _close_within_bound(rig.worker)
        row = await rig.db.jobs.get(job_id)
        assert row is not None and row.state in ("queued", "running")
        assert await rig.ledger.checkpoint(job_id)


async def _through_a_short_outage(rig: Rig, private_redis: PrivateRedis) -> list[JobEvent]:
    """Run a 250-step job with Redis stopped for 1.2 s (within a 3 s lease) mid-job;
    its events, once it is checked to have succeeded in its first attempt."""
    job_id, subscription = await start_job(rig, steps=250)
    private_redis.stop(keep_data=True)
    await asyncio.sleep(1.2)
    private_redis.start()
    events = await events_until_final(subscription)
    assert events[-1].kind is EventKind.SUCCEEDED
    row = await rig.db.jobs.get(job_id)
    assert row is not None and row.state == "succeeded" and row.attempts == 1
    return events


async def test_a_redis_outage_shorter_than_the_lease_leaves_the_job_running(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """Redis stopped mid-job and started again within the lease: the worker reconnects,
    the job finishes in its first attempt, never preempted."""
    async with open_rig(tmp_path, private_redis, lease_s=3.0) as rig:
        events = await _through_a_short_outage(rig, private_redis)
        assert not any(event.kind is EventKind.PREEMPTED for event in events)


async def test_a_redis_outage_while_claims_are_scoped_to_realtime_work(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """While its batch would not gain by growing, the worker peeks at the queue before
    each claim; Redis stopped then (within the lease) costs no job: the running one
    finishes in its first attempt, and a job queued after the outage runs too."""

    def never_pays(shape: Hashable, running_rows: int, rows: int) -> bool:
        return False

    async with open_rig(tmp_path, private_redis, lease_s=3.0, joins=never_pays) as rig:
        await _through_a_short_outage(rig, private_redis)
        _, after = await start_job(rig, steps=5)
        assert (await events_until_final(after))[-1].kind is EventKind.SUCCEEDED


async def test_a_redis_outage_longer_than_the_lease_resumes_the_job_from_its_checkpoint(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """Redis away for longer than the lease: the job is taken off the device with its
    checkpoint recorded; once Redis is back it is claimed again and resumes from there."""
    async with open_rig(tmp_path, private_redis, lease_s=1.0) as rig:
        job_id, subscription = await start_job(rig, steps=300, at_step=3)
        private_redis.stop(keep_data=True)
        await eventually(lambda: not rig.worker.busy)
        row = await rig.db.jobs.get(job_id)
        assert row is not None and row.state == "queued"
        assert await rig.ledger.checkpoint(job_id)
        private_redis.start()
        events = await events_until_final(subscription)
        assert events[-1].kind is EventKind.SUCCEEDED
        assert steps_after_preemption(events)[0] > 3  # from the checkpoint, not the start
        row = await rig.db.jobs.get(job_id)
        assert row is not None and row.attempts == 2


async def test_a_job_the_queue_forgot_is_queued_again_and_resumes(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """Redis flushed mid-job (as when it restarts empty): the worker takes the job off the
    device with its checkpoint, queues it anew, and it resumes and finishes once, charged
    once."""
    from redis.asyncio import Redis

    from backend.clock import usage_month, wall_ms

    async with open_rig(tmp_path, private_redis, lease_s=1.5) as rig:
        job_id, subscription = await start_job(rig, steps=400, at_step=3)
        client = Redis.from_url(private_redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        events = await events_until_final(subscription)
        assert events[-1].kind is EventKind.SUCCEEDED
        assert steps_after_preemption(events)[0] > 3  # from the checkpoint, not the start
        row = await rig.db.jobs.get(job_id)
        assert row is not None and row.state == "succeeded" and row.attempts == 2
        usage = await rig.db.usage.get(1, usage_month(wall_ms()))
        assert usage.jobs == 1
