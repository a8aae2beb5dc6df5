"""The worker's failure paths, on a step-timed fake engine: bookkeeping that raises, a
job it cannot set up, a task that crashes, a claim of a job already finished, renewals
that fail for a while. No job stays running, no lease is held forever, claiming goes on.

Faults come from fakes of our own Protocols (``tests/fakes.py``) around the real
SQLite ledger and the in-process queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.catalog import ModelCatalog
from backend.errors import JobFailedError, LeaseLostError, QueueError, QueueUnavailableError
from backend.events.base import EventKind, Subscription
from backend.events.memory import LocalEventBus
from backend.models import Job, JobSpec
from backend.queue.base import EVERYTHING, ClaimFilter, LostBecause
from backend.queue.memory import MemoryQueue
from backend.scheduling.preemption import Rules
from backend.service import GenerationService
from backend.worker.ledger.sqlite import SqliteLedger
from backend.worker.worker import DeviceWorker, WorkerConfig
from config.settings import load_settings
from storage.db import Database
from storage.images import ImageStore
from tests.backend.worker.conftest import events_until_final, eventually
from tests.fakes import FaultyLedger, FlakyQueue, StepTimedEngine

Logs = list[MutableMapping[str, Any]]

# Bounds that detect a hang; a healthy run takes a fraction of them.
BOUND_S = 10.0


@dataclass
class Rig:
    service: GenerationService
    worker: DeviceWorker
    events: LocalEventBus
    db: Database
    queue: FlakyQueue
    ledger: FaultyLedger
    images: Path


@contextlib.asynccontextmanager
async def open_rig(
    tmp_path: Path,
    *,
    lease_s: float = 5.0,
    step_s: float = 0.01,
    allow: Callable[[], ClaimFilter] = lambda: EVERYTHING,
    evict_wait_s: float = 10.0,
) -> AsyncIterator[Rig]:
    settings = load_settings()
    catalog = ModelCatalog(settings)
    queue = FlakyQueue(MemoryQueue())
    events = LocalEventBus()
    images = tmp_path / "img"
    async with Database.open(tmp_path / "jobs.db") as db:
        service = GenerationService(settings.scheduler, settings.engine, db, queue, catalog, events)
        ledger = FaultyLedger(SqliteLedger(db, ImageStore(images)))
        rules = Rules(enabled=False, min_steps=2, max_per_job=10)
        config = WorkerConfig(
            "w1", rules, lease_s=lease_s, poll_s=0.02, allow=allow, evict_wait_s=evict_wait_s
        )
        engine = functools.partial(StepTimedEngine, step_s=step_s)
        worker = DeviceWorker(config, queue, engine, catalog, ledger, events)
        await db.users.ensure(1)
        await db.users.set_tier(1, "admin")
        async with worker:
            yield Rig(service, worker, events, db, queue, ledger, images)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with open_rig(tmp_path) as opened:
        yield opened


def job_spec(seed: int = 1, steps: int = 3) -> JobSpec:
    return JobSpec(prompt="a calm sea", seed=seed, width=64, height=64, n=1, steps=steps)


async def submit(rig: Rig, spec: JobSpec) -> tuple[str, Subscription]:
    job_id = rig.service.new_job_id()
    subscription = rig.service.follow(job_id)
    await rig.service.submit(spec, user_id=1, job_id=job_id)
    return job_id, subscription


async def reach_step(rig: Rig, job_id: str, step: int = 1) -> None:
    """Return once the job reported ``step`` (watching on a subscription of its own)."""
    watch = rig.events.subscribe(None)
    async with asyncio.timeout(BOUND_S):
        async for event in watch:
            if event.job_id == job_id and event.kind is EventKind.STEP and event.step >= step:
                break
    watch.close()


async def released(rig: Rig, job_id: str, times: int = 1) -> bool:
    """Whether the worker's ack of the job reached the queue ``times`` times (so the
    queue no longer has it)."""
    return rig.queue.acked.count(job_id) >= times and await rig.queue.position(job_id) is None


async def state(rig: Rig, job_id: str) -> str:
    row = await rig.db.jobs.get(job_id)
    assert row is not None
    return row.state


async def has_state(rig: Rig, job_id: str, wanted: str) -> bool:
    return await state(rig, job_id) == wanted


async def test_a_result_that_cannot_be_stored_fails_the_job_and_frees_its_slot(rig: Rig) -> None:
    """The ledger raising OSError (disk full) on a result fails the job with that reason,
    publishes the failure, forgets the job in the queue, and the next job runs."""
    rig.ledger.fail("succeeded", OSError(errno.ENOSPC, "No space left on device"), times=1)
    bad_id, bad = await submit(rig, job_spec(1))
    with pytest.raises(JobFailedError, match="No space left on device"):
        async with asyncio.timeout(BOUND_S):
            await rig.service.wait(bad)
    row = await rig.db.jobs.get(bad_id)
    assert row is not None and row.state == "failed" and "No space left" in (row.error or "")
    _, good = await submit(rig, job_spec(2))
    async with asyncio.timeout(BOUND_S):
        assert (await rig.service.wait(good)).grid_path
    assert not rig.worker.busy
    await eventually(lambda: released(rig, bad_id))


async def test_an_image_store_that_is_not_a_directory_fails_the_job(rig: Rig) -> None:
    """With the image store's directory replaced by a file, a finished job fails with the
    OS's reason instead of staying running, and its lease is released."""
    rig.images.write_bytes(b"not a directory")
    job_id, subscription = await submit(rig, job_spec())
    events = await events_until_final(subscription)
    assert events[-1].kind is EventKind.FAILED
    assert "directory" in (events[-1].error or "") or "exists" in (events[-1].error or "")
    assert await state(rig, job_id) == "failed"
    await eventually(lambda: released(rig, job_id))


async def test_a_failing_failure_record_still_ends_the_job(rig: Rig) -> None:
    """When recording the failure raises too, the failure is still published and the job
    leaves the worker and the queue: nothing waits for it forever."""
    rig.ledger.fail("succeeded", OSError(errno.EIO, "I/O error"), times=1)
    rig.ledger.fail("failed", OSError(errno.EIO, "I/O error"), times=1)
    job_id, subscription = await submit(rig, job_spec())
    events = await events_until_final(subscription)
    assert events[-1].kind is EventKind.FAILED and "I/O error" in (events[-1].error or "")
    assert not rig.worker.busy
    await eventually(lambda: released(rig, job_id))


async def test_a_job_unknown_to_the_ledger_is_released_then_dropped(rig: Rig, logs: Logs) -> None:
    """A job whose row this process's database lacks is given back to the queue a bounded
    number of times (for another process), then dropped with its reason; claiming goes
    on and this process's own job runs."""
    foreign = Job("foreign-job", job_spec(9), user_id=1)
    assert await rig.queue.inner.enqueue(foreign)
    _, own = await submit(rig, job_spec(2))
    async with asyncio.timeout(BOUND_S):
        assert (await rig.service.wait(own)).grid_path
    await eventually(lambda: released(rig, foreign.id))
    releases = [e for e in logs if e["event"] == "job_released" and e["job_id"] == foreign.id]
    dropped = [e for e in logs if e["event"] == "job_failed" and e["job_id"] == foreign.id]
    assert len(releases) >= 1 and len(dropped) == 1
    assert "foreign-job" in dropped[0]["error"]
    assert not rig.worker.busy


async def test_bookkeeping_raising_in_the_set_up_error_path_does_not_stop_claiming(
    rig: Rig, logs: Logs
) -> None:
    """A job whose claim and failure records both raise does not kill the claim loop: the
    job is released, then failed, with its id logged, and the next job runs."""
    broken_id = rig.service.new_job_id()
    rig.ledger.fail("claimed", RuntimeError("ledger broken"), job_id=broken_id)
    rig.ledger.fail("failed", RuntimeError("ledger broken"), job_id=broken_id)
    broken = rig.service.follow(broken_id)
    await rig.service.submit(job_spec(1), user_id=1, job_id=broken_id)
    events = await events_until_final(broken)
    assert events[-1].kind is EventKind.FAILED and "ledger broken" in (events[-1].error or "")
    _, good = await submit(rig, job_spec(2))
    async with asyncio.timeout(BOUND_S):
        assert (await rig.service.wait(good)).grid_path
    assert any(e["event"] == "job_setup_failed" and e["job_id"] == broken_id for e in logs)
    await eventually(lambda: released(rig, broken_id))


async def test_a_crashed_claim_task_is_logged_and_restarted(tmp_path: Path, logs: Logs) -> None:
    """An unexpected exception in the claim loop is logged with the task's name and the
    loop restarts: a job queued afterwards still runs."""
    calls = 0

    def allow() -> ClaimFilter:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("policy exploded")
        return EVERYTHING

    async with open_rig(tmp_path, allow=allow) as opened:
        _, subscription = await submit(opened, job_spec())
        async with asyncio.timeout(BOUND_S):
            assert (await opened.service.wait(subscription)).grid_path
    crashes = [e for e in logs if e["event"] == "worker_task_crashed"]
    assert crashes and crashes[0]["task"] == "claim" and "policy exploded" in crashes[0]["error"]


async def test_a_claim_of_a_finished_job_is_dropped_without_running(rig: Rig) -> None:
    """A job whose result was recorded (its ack lost) and that the queue hands out again
    is not run again: no start, no second charge, and the queue forgets it."""
    spec = job_spec(4)
    job_id, _ = await submit(rig, spec)
    await eventually(lambda: has_state(rig, job_id, "succeeded"))
    usage_before = await rig.db.usage.get(1, _month(rig))
    job = Job(job_id, spec, user_id=1, meta={"speed": "fast"})
    follow = rig.events.subscribe(job_id)
    assert await rig.queue.inner.enqueue(job)  # the queue hands it out once more
    await eventually(lambda: released(rig, job_id, times=2))
    await asyncio.sleep(0.1)
    follow.close()
    assert follow.queue.empty()  # not started, stepped or finished again
    row = await rig.db.jobs.get(job_id)
    assert row is not None and row.state == "succeeded" and row.attempts == 1
    assert await rig.db.usage.get(1, _month(rig)) == usage_before


def _month(rig: Rig) -> str:
    from backend.clock import usage_month

    return usage_month(rig.db.now_ms())


@pytest.mark.parametrize(
    "error",
    [QueueUnavailableError("fake", "connection reset"), QueueError("Redis failed: timeout")],
    ids=["unavailable", "bare-queue-error"],
)
async def test_renewal_errors_shorter_than_the_lease_keep_the_job(
    tmp_path: Path, error: Exception, logs: Logs
) -> None:
    """Renewals failing for less than the lease are retried: the job is neither cancelled
    nor run twice, and it finishes in its first attempt."""
    async with open_rig(tmp_path, lease_s=0.6, step_s=0.01) as opened:
        job_id, subscription = await submit(opened, job_spec(steps=150))
        await reach_step(opened, job_id)
        opened.queue.outage("renew", "is_cancelled", error=error)
        await asyncio.sleep(0.35)  # about half the lease: two renewals fail
        opened.queue.restore()
        events = await events_until_final(subscription)
        assert events[-1].kind is EventKind.SUCCEEDED
        assert not any(e.kind is EventKind.PREEMPTED for e in events)
        row = await opened.db.jobs.get(job_id)
        assert row is not None and row.attempts == 1
    assert any(e["event"] == "lease_renewal_failed" for e in logs)
    assert not any(e["event"] == "lease_lost" for e in logs)


async def test_renewals_failing_past_the_lease_checkpoint_the_job(tmp_path: Path) -> None:
    """Once renewals have failed for a whole lease, the job is taken off the device with
    its checkpoint recorded; when the queue answers again it resumes from there."""
    async with open_rig(tmp_path, lease_s=0.5, step_s=0.01) as opened:
        job_id, subscription = await submit(opened, job_spec(steps=200))
        await reach_step(opened, job_id, 3)
        opened.queue.outage("renew", "is_cancelled", "requeue", "ack", "claim")
        await eventually(lambda: has_state(opened, job_id, "queued"))
        assert await opened.ledger.checkpoint(job_id)
        assert not opened.worker.busy
        opened.queue.restore()
        events = await events_until_final(subscription)
        assert events[-1].kind is EventKind.SUCCEEDED
        kinds = [event.kind for event in events]
        after = events[kinds.index(EventKind.PREEMPTED) :]
        resumed = [event.step for event in after if event.kind is EventKind.STEP]
        assert resumed and resumed[0] > 3  # from the checkpoint, not from step 1
        row = await opened.db.jobs.get(job_id)
        assert row is not None and row.attempts == 2


async def test_a_lost_lease_stops_the_job_and_leaves_its_records(rig: Rig, logs: Logs) -> None:
    """A renewal refused because another claim superseded the lease stops this worker's
    copy at once, without recording anything for it."""
    job_id, _ = await submit(rig, job_spec(steps=500))
    await reach_step(rig, job_id)
    lost = LeaseLostError(job_id, "w1", LostBecause.SUPERSEDED)
    rig.queue.outage("renew", error=lost)
    await eventually(lambda: not rig.worker.busy)
    assert await state(rig, job_id) == "running"  # the new holder's to record
    assert any(e["event"] == "lease_lost" and e["job_id"] == job_id for e in logs)


async def test_close_does_not_wait_forever_for_a_step_boundary(tmp_path: Path, logs: Logs) -> None:
    """A job whose next step boundary does not come within ``evict_wait_s`` is left as
    recorded (running; its lease lapses and the queue hands it out again) and close
    returns."""
    async with open_rig(tmp_path, step_s=1.5, evict_wait_s=0.1) as opened:
        job_id, _ = await submit(opened, job_spec(steps=100))
        await reach_step(opened, job_id)
        closing = asyncio.create_task(opened.worker.close(drain_s=0))
        done, _ = await asyncio.wait({closing}, timeout=BOUND_S)
        assert closing in done
        closing.result()
        assert await state(opened, job_id) == "running"
        assert not opened.worker.busy
    assert any(e["event"] == "job_left_running" and e["job_id"] == job_id for e in logs)
