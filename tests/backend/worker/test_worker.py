"""The device worker on the real engine: batching, storage, preemption with exact resume,
cancellation, failures alone and a drain that loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from backend.app import Backend, open_backend
from backend.errors import JobFailedError
from backend.events.base import EventKind, JobEvent, Subscription
from backend.models import JobSpec, Speed
from config.settings import load_settings


@pytest.fixture
async def app(engine_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    monkeypatch.setenv("IMAGINE_QUEUE__LEASE_S", "0.6")
    monkeypatch.setenv("IMAGINE_ENGINE__BATCH_WINDOW_MS", "20")
    async with open_backend(load_settings()) as backend:
        yield backend


def spec(prompt: str, **changes: object) -> JobSpec:
    base = JobSpec(prompt=prompt, seed=1, width=64, height=64, n=2, steps=3)
    return replace(base, **changes)  # type: ignore[arg-type]


async def collect(subscription: Subscription) -> list[JobEvent]:
    return [event async for event in subscription]


async def submit(app: Backend, job_spec: JobSpec, **meta: object) -> tuple[str, Subscription]:
    job_id = app.service.new_job_id()
    subscription = app.service.follow(job_id)
    await app.service.submit(job_spec, user_id=1, job_id=job_id, meta=dict(meta))
    return job_id, subscription


async def test_job_is_stored_with_grid_samples_and_progress(app: Backend) -> None:
    """A job's grid and samples are stored and recorded; steps come with ETA and previews."""
    job_id, subscription = await submit(app, spec("a cat"))
    events = await collect(subscription)
    kinds = [event.kind for event in events]
    assert kinds[0] is EventKind.QUEUED and kinds[-1] is EventKind.SUCCEEDED
    steps = [event for event in events if event.kind is EventKind.STEP]
    assert [(e.step, e.total) for e in steps] == [(1, 3), (2, 3)]
    assert all(e.eta_s is not None and e.preview for e in steps)
    with Image.open(events[-1].images[0]) as grid:
        assert grid.size == (2 * 256, 256)  # 64 px samples, tiles scaled 4x to 256 px
    row = await app.db.jobs.get(job_id)
    assert row is not None and row.state == "succeeded" and row.attempts == 1
    assert [image.idx for image in await app.db.images.list_for_job(job_id)] == [-1, 0, 1]


async def test_near_simultaneous_jobs_share_the_device(app: Backend) -> None:
    """Jobs submitted together all start before any of them finishes (one batch), for a
    tier that may run several at once."""
    await app.db.users.ensure(1)
    await app.db.users.set_tier(1, "pro")
    follow = app.events.subscribe(None)
    ids = [(await submit(app, spec(f"job {i}", seed=i)))[0] for i in range(3)]
    order: list[tuple[str, EventKind]] = []
    async for event in follow:
        if event.job_id in ids and event.kind in (EventKind.STARTED, EventKind.SUCCEEDED):
            order.append((event.job_id, event.kind))
        if sum(kind is EventKind.SUCCEEDED for _, kind in order) == 3:
            break
    follow.close()
    first_success = next(i for i, (_, kind) in enumerate(order) if kind is EventKind.SUCCEEDED)
    assert {job for job, kind in order[:first_success] if kind is EventKind.STARTED} == set(ids)


async def test_preempted_job_resumes_to_identical_pixels(app: Backend) -> None:
    """Evicted mid-run, a job is requeued with its checkpoint, resumed, and its grid is
    byte-identical to an uninterrupted run's."""
    long = spec("a long one", steps=12)
    _, reference = await submit(app, long)
    expected = Path((await collect(reference))[-1].images[0]).read_bytes()

    job_id, subscription = await submit(app, long)
    events = []
    async for event in subscription:
        events.append(event)
        if event.kind is EventKind.STEP and event.step == 3:
            assert app.workers[0].evict(job_id)
    kinds = [event.kind for event in events]
    assert EventKind.PREEMPTED in kinds and kinds[-1] is EventKind.SUCCEEDED
    preempted = events[kinds.index(EventKind.PREEMPTED)]
    after = [e.step for e in events[kinds.index(EventKind.PREEMPTED) :] if e.kind is EventKind.STEP]
    assert preempted.step >= 3
    assert after[0] == preempted.step + 1  # resumed where it left off, not from the start
    assert Path(events[-1].images[0]).read_bytes() == expected
    row = await app.db.jobs.get(job_id)
    assert row is not None and row.attempts == 2


async def test_job_paused_for_a_quicker_one_resumes_in_place_to_identical_pixels(
    app: Backend,
) -> None:
    """A long job is paused on the device (not sent back to the queue) when a quicker
    realtime job of another size arrives; the quick one finishes first, and the long
    one's grid is byte-identical to an uninterrupted run's, from a single attempt."""
    await app.db.users.ensure(1)
    await app.db.users.set_tier(1, "pro")
    long = spec("a long one", steps=30, speed=Speed.RELAX)
    _, reference = await submit(app, long)
    expected = Path((await collect(reference))[-1].images[0]).read_bytes()

    job_id, subscription = await submit(app, long)
    events, quick = [], None
    async for event in subscription:
        events.append(event)
        if event.kind is EventKind.STEP and event.step == 3 and quick is None:
            quick = await submit(app, spec("quick", width=128, height=128, n=1))
    assert quick is not None
    quick_events = await collect(quick[1])
    kinds = [event.kind for event in events]
    assert EventKind.PREEMPTED in kinds and kinds[-1] is EventKind.SUCCEEDED
    assert quick_events[-1].kind is EventKind.SUCCEEDED
    assert Path(events[-1].images[0]).read_bytes() == expected
    row, quick_row = await app.db.jobs.get(job_id), await app.db.jobs.get(quick[0])
    assert row is not None and quick_row is not None
    assert row.attempts == 1  # paused in place: never back in the queue
    assert quick_row.finished_at_ms is not None and row.finished_at_ms is not None
    assert quick_row.finished_at_ms < row.finished_at_ms


async def test_cancelled_running_job_stops(app: Backend) -> None:
    """Cancelling a running job through the queue stops it at a step boundary."""
    job_id, subscription = await submit(app, spec("endless", steps=150, n=1))
    async for event in subscription:
        if event.kind is EventKind.STEP and event.step == 1:
            await app.queue.cancel(job_id)
        if event.kind.is_final:
            assert event.kind is EventKind.CANCELLED
    row = await app.db.jobs.get(job_id)
    assert row is not None and row.state == "cancelled"


async def test_bad_source_image_fails_alone(app: Backend, tmp_path: Path) -> None:
    """A variation whose source is not an image fails with a reason; the next job runs."""
    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"plain text")
    bad_id, bad = await submit(app, spec("variation"), source_image=str(bogus), strength=0.5)
    _, good = await submit(app, spec("a calm sea"))
    with pytest.raises(JobFailedError, match="not a readable image"):
        await app.service.wait(bad)
    assert (await app.service.wait(good)).grid_path
    row = await app.db.jobs.get(bad_id)
    assert row is not None and row.state == "failed" and "image" in (row.error or "")


async def test_shutdown_requeues_running_job_with_checkpoint(
    engine_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a worker mid-job puts the job back in the queue with a checkpoint."""
    monkeypatch.setenv("IMAGINE_QUEUE__LEASE_S", "0.6")
    async with open_backend(load_settings()) as backend:
        job_id, subscription = await submit(backend, spec("interrupted", steps=150, n=1))
        async for event in subscription:
            if event.kind is EventKind.STEP:
                break
        worker = backend.workers[0]
        await worker.close(drain_s=0.0)
        assert await backend.queue.depth() == 1
        lease = await backend.queue.claim("inspector", lease_s=5)
        assert lease is not None and lease.job.id == job_id and lease.checkpoint
        row = await backend.db.jobs.get(job_id)
        assert row is not None and row.state == "queued"
        await asyncio.sleep(0)
