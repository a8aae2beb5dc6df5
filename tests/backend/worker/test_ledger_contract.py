"""The JobLedger contract, run unchanged against every implementation: each call's effect
as the front end reads it back (state, attempts, progress, error, images, usage), each
call's idempotency (the same call twice changes nothing), and stale attempts ignored.

The front end reads the system of record, SQLite, so that is what the suite reads back;
a ledger for remote workers joins ``LEDGERS`` with the process that applies its records.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from backend.grid import encode_png
from backend.models import Job, JobSpec
from backend.worker.ledger.base import GRID_INDEX, Attempt, JobLedger, ResultImage, UnknownJobError
from backend.worker.ledger.sqlite import SqliteLedger
from storage.db import Database
from storage.images import ImageStore

START_MS = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp() * 1000)
MONTH = "2026-03"
USER = 7


def _sqlite(db: Database, images: ImageStore) -> JobLedger:
    # Every step recorded, so that the suite can read each one back.
    return SqliteLedger(db, images, progress_every_s=0.0)


LEDGERS: dict[str, Callable[[Database, ImageStore], JobLedger]] = {"sqlite": _sqlite}


@dataclass
class Rig:
    ledger: JobLedger
    db: Database  # what the front end reads


@pytest.fixture(params=sorted(LEDGERS))
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    # A clock that moves on every read: a repeated call that wrote a timestamp again
    # would show.
    ticks = itertools.count(START_MS, 1000)
    async with Database.open(tmp_path / "ledger.db", now_ms=lambda: next(ticks)) as db:
        yield Rig(LEDGERS[request.param](db, ImageStore(tmp_path / "images")), db)


SPEC = JobSpec(prompt="a lighthouse", seed=1, width=64, height=64, n=2, steps=8)


async def queued_job(rig: Rig, job_id: str = "job-1", speed: str = "fast") -> Job:
    spec = SPEC
    meta = {"speed": speed}
    await rig.db.jobs.insert(job_id, USER, spec.to_json(), "realtime", meta=meta)
    await rig.db.jobs.mark_queued(job_id)
    return Job(job_id, spec, USER, meta=meta)


def png(color: str, size: tuple[int, int] = (2, 2)) -> bytes:
    return encode_png(Image.new("RGB", size, color))


def result_images() -> list[ResultImage]:
    # Out of index order on purpose: the ledger orders by index.
    return [
        ResultImage(0, png("red"), 2, 2),
        ResultImage(GRID_INDEX, png("blue", (4, 2)), 4, 2),
        ResultImage(1, png("green"), 2, 2),
    ]


async def snapshot(rig: Rig, job_id: str) -> tuple[Any, ...]:
    """Everything the front end can read about the job and its user."""
    return (
        await rig.db.jobs.get(job_id),
        await rig.db.images.list_for_job(job_id),
        await rig.db.usage.get(USER, MONTH),
        await rig.ledger.checkpoint(job_id),
    )


def first(job: Job) -> Attempt:
    return Attempt(job.id, 1, "lease-1")


def second(job: Job) -> Attempt:
    return Attempt(job.id, 2, "lease-2")


async def test_every_implementation_satisfies_the_protocol(rig: Rig) -> None:
    """Each implementation is a JobLedger."""
    assert isinstance(rig.ledger, JobLedger)


async def test_claim_runs_the_job_and_counts_one_attempt_once(rig: Rig) -> None:
    """A claim makes the job running with one attempt; the same claim again changes
    nothing (attempts not counted twice, start time kept)."""
    job = await queued_job(rig)
    assert await rig.ledger.claimed(first(job)) is True
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "running" and row.attempts == 1
    assert row.started_at_ms is not None
    before = await snapshot(rig, job.id)
    assert await rig.ledger.claimed(first(job)) is True  # it still holds the job
    assert await snapshot(rig, job.id) == before


async def test_progress_is_recorded_never_backwards_and_restarts_with_a_claim(rig: Rig) -> None:
    """Progress records the step; a repeat or an older step changes nothing; the next
    attempt's progress starts again."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.progress(first(job), 3, 8)
    row = await rig.db.jobs.get(job.id)
    assert row is not None and (row.step, row.total_steps) == (3, 8)
    before = await snapshot(rig, job.id)
    await rig.ledger.progress(first(job), 3, 8)
    await rig.ledger.progress(first(job), 2, 8)
    assert await snapshot(rig, job.id) == before
    await rig.ledger.requeued(first(job), b"at-3")
    await rig.ledger.claimed(second(job))
    await rig.ledger.progress(second(job), 1, 8)
    row = await rig.db.jobs.get(job.id)
    assert row is not None and (row.step, row.total_steps) == (1, 8)


async def test_requeue_keeps_the_checkpoint_and_the_step_reached_once(rig: Rig) -> None:
    """A requeue queues the job again with its checkpoint and the step it reached; the
    same requeue again changes nothing."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.progress(first(job), 4, 8)
    await rig.ledger.requeued(first(job), b"state-at-4")
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "queued" and row.step == 4
    assert await rig.ledger.checkpoint(job.id) == b"state-at-4"
    before = await snapshot(rig, job.id)
    await rig.ledger.requeued(first(job), b"state-at-4")
    assert await snapshot(rig, job.id) == before


async def test_a_repeated_claim_after_a_requeue_changes_nothing(rig: Rig) -> None:
    """A claim delivered again after its attempt requeued the job does not run it again;
    the next attempt's claim counts a second attempt."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.requeued(first(job), b"cp")
    before = await snapshot(rig, job.id)
    assert await rig.ledger.claimed(first(job)) is False
    assert await snapshot(rig, job.id) == before
    assert await rig.ledger.claimed(second(job)) is True
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "running" and row.attempts == 2


async def test_success_stores_records_charges_once_and_clears_the_checkpoint(rig: Rig) -> None:
    """A result's files are stored by content hash and recorded grid first, the job
    succeeded, the device time charged to the fast column and the checkpoint dropped;
    the same call again returns the same paths and changes nothing."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.requeued(first(job), b"cp")
    await rig.ledger.claimed(second(job))
    images = result_images()
    paths = await rig.ledger.succeeded(job, second(job), images, 2.5)
    by_index = sorted(images, key=lambda image: image.index)
    assert [Path(path).read_bytes() for path in paths] == [image.png for image in by_index]
    assert [Path(path).stem for path in paths] == [
        hashlib.sha256(image.png).hexdigest() for image in by_index
    ]
    row, rows, usage, checkpoint = await snapshot(rig, job.id)
    assert row.state == "succeeded" and row.error is None and row.finished_at_ms is not None
    assert [(r.idx, r.path, r.width, r.height) for r in rows] == [
        (-1, paths[0], 4, 2),
        (0, paths[1], 2, 2),
        (1, paths[2], 2, 2),
    ]
    assert (usage.fast_gpu_s, usage.relax_gpu_s, usage.jobs) == (2.5, 0.0, 1)
    assert checkpoint is None
    before = await snapshot(rig, job.id)
    assert await rig.ledger.succeeded(job, second(job), images, 2.5) == paths
    assert await snapshot(rig, job.id) == before


async def test_relax_job_is_charged_to_the_relax_column(rig: Rig) -> None:
    """A relax job's device time counts as relax time, not against the fast budget."""
    job = await queued_job(rig, speed="relax")
    await rig.ledger.claimed(first(job))
    await rig.ledger.succeeded(job, first(job), result_images(), 4.0)
    usage = await rig.db.usage.get(USER, MONTH)
    assert (usage.fast_gpu_s, usage.relax_gpu_s, usage.jobs) == (0.0, 4.0, 1)


async def test_failure_records_the_reason_once(rig: Rig) -> None:
    """A failure ends the job with the reason the user sees; the same call again, or a
    later result of the same attempt, changes nothing."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.failed(first(job), "out of memory")
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "failed" and row.error == "out of memory"
    before = await snapshot(rig, job.id)
    await rig.ledger.failed(first(job), "out of memory")
    assert await rig.ledger.succeeded(job, first(job), result_images(), 1.0) == ()
    assert await snapshot(rig, job.id) == before


async def test_cancellation_is_recorded_once(rig: Rig) -> None:
    """A cancellation ends the job cancelled; the same call again changes nothing."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.cancelled(first(job))
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "cancelled" and row.error is None
    before = await snapshot(rig, job.id)
    await rig.ledger.cancelled(first(job))
    await rig.ledger.failed(first(job), "too late")
    assert await snapshot(rig, job.id) == before


async def test_stale_attempt_cannot_overwrite_a_newer_result(rig: Rig) -> None:
    """After a newer attempt succeeded, the lost attempt's late result is ignored
    (returns no paths): images, state and usage stay the newer attempt's."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.claimed(second(job))  # the first lease was lost
    paths = await rig.ledger.succeeded(job, second(job), result_images(), 2.0)
    before = await snapshot(rig, job.id)
    late = [ResultImage(GRID_INDEX, png("white", (4, 2)), 4, 2)]
    assert await rig.ledger.succeeded(job, first(job), late, 9.0) == ()
    await rig.ledger.failed(first(job), "late failure")
    assert await snapshot(rig, job.id) == before
    assert [row.path for row in await rig.db.images.list_for_job(job.id)] == list(paths)


async def test_stale_attempt_is_ignored_while_the_newer_one_runs(rig: Rig) -> None:
    """While a newer attempt runs, the lost attempt's progress, requeue, failure,
    cancellation and late claim change nothing."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.claimed(second(job))
    await rig.ledger.progress(second(job), 2, 8)
    before = await snapshot(rig, job.id)
    await rig.ledger.progress(first(job), 5, 8)
    await rig.ledger.requeued(first(job), b"stale")
    await rig.ledger.failed(first(job), "stale")
    await rig.ledger.cancelled(first(job))
    assert await rig.ledger.claimed(Attempt(job.id, 1, "lease-late")) is False
    assert await snapshot(rig, job.id) == before


async def test_a_claim_of_a_finished_job_may_not_run_it(rig: Rig) -> None:
    """A job whose result was recorded (its lease lapsed before the ack, and the queue
    handed it out again) answers a new claim False and records nothing: it is not run,
    counted or charged again."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.succeeded(job, first(job), result_images(), 2.0)
    before = await snapshot(rig, job.id)
    assert await rig.ledger.claimed(second(job)) is False
    assert await snapshot(rig, job.id) == before
    failed = await queued_job(rig, "job-2")
    await rig.ledger.claimed(first(failed))
    await rig.ledger.failed(first(failed), "out of memory")
    assert await rig.ledger.claimed(second(failed)) is False


async def test_attempt_numbers_restarting_after_the_queue_lost_the_job(rig: Rig) -> None:
    """When the queue lost a requeued job and numbers its attempts from 1 again, the new
    lease is a new attempt: it runs, is counted, and its result is recorded."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.requeued(first(job), b"cp")
    again = Attempt(job.id, 1, "lease-after-flush")
    assert await rig.ledger.claimed(again) is True
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "running" and row.attempts == 2
    assert await rig.ledger.succeeded(job, again, result_images(), 1.0)
    row = await rig.db.jobs.get(job.id)
    assert row is not None and row.state == "succeeded"


async def test_the_front_end_reads_a_whole_life_back(rig: Rig) -> None:
    """After a claim, progress, a preemption and a resumed success, the front end reads
    the job succeeded after two attempts, its images as readable files grid first, no
    error, no checkpoint, and one job's device time on the user's month."""
    job = await queued_job(rig)
    await rig.ledger.claimed(first(job))
    await rig.ledger.progress(first(job), 2, 8)
    await rig.ledger.requeued(first(job), b"at-2")
    assert await rig.ledger.checkpoint(job.id) == b"at-2"
    await rig.ledger.claimed(second(job))
    await rig.ledger.progress(second(job), 3, 8)
    paths = await rig.ledger.succeeded(job, second(job), result_images(), 1.5)
    row, rows, usage, checkpoint = await snapshot(rig, job.id)
    assert row.state == "succeeded" and row.attempts == 2 and row.error is None
    assert [r.idx for r in rows] == [-1, 0, 1] and [r.path for r in rows] == list(paths)
    with Image.open(rows[0].path) as grid:
        assert grid.size == (4, 2)
    assert checkpoint is None
    assert (usage.fast_gpu_s, usage.jobs) == (1.5, 1)


async def test_unknown_job_is_an_error_except_for_progress(rig: Rig) -> None:
    """Calls that change a job the ledger does not know raise UnknownJobError; progress
    ignores it and there is no checkpoint to read."""
    ghost = Job("ghost", SPEC, USER)
    attempt = first(ghost)
    with pytest.raises(UnknownJobError):
        await rig.ledger.claimed(attempt)
    with pytest.raises(UnknownJobError):
        await rig.ledger.requeued(attempt, b"cp")
    with pytest.raises(UnknownJobError):
        await rig.ledger.succeeded(ghost, attempt, result_images(), 1.0)
    with pytest.raises(UnknownJobError):
        await rig.ledger.failed(attempt, "x")
    with pytest.raises(UnknownJobError):
        await rig.ledger.cancelled(attempt)
    await rig.ledger.progress(attempt, 1, 8)
    assert await rig.ledger.checkpoint("ghost") is None
