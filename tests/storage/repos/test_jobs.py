"""The job and image repositories (storage.repos.jobs), on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite
import pytest

from storage.db import Database
from storage.errors import NotFoundError, StateConflictError
from tests.fakes import FakeClock

SPEC = '{"prompt":"a lighthouse at dusk","seed":7}'


# Jobs


async def test_job_lifecycle_timestamps_and_attempts(db: Database, clock: FakeClock) -> None:
    """Each stage stamps its time; a requeued job is queued again and counts a new attempt."""
    job = await db.jobs.insert("j1", 42, SPEC, "realtime", guild_id=5, channel_id=6)
    assert (job.state, job.attempts, job.submitted_at_ms) == ("submitted", 0, 1000)
    assert job.kind == "imagine"
    assert (job.guild_id, job.channel_id, job.spec_json, job.lane) == (5, 6, SPEC, "realtime")
    assert await db.users.get(42) is not None
    assert await db.guilds.get(5) is not None

    clock.advance(100)
    await db.jobs.mark_queued("j1")
    clock.advance(100)
    await db.jobs.mark_started("j1")
    started = await db.jobs.get("j1")
    assert started is not None
    assert (started.state, started.queued_at_ms, started.started_at_ms) == ("running", 1100, 1200)
    assert started.attempts == 1

    clock.advance(100)
    await db.jobs.mark_queued("j1")  # preempted
    requeued = await db.jobs.get("j1")
    assert requeued is not None
    assert (requeued.state, requeued.queued_at_ms) == ("queued", 1300)

    clock.advance(100)
    await db.jobs.mark_started("j1")
    clock.advance(100)
    await db.jobs.mark_finished("j1", "succeeded")
    clock.advance(100)
    await db.jobs.mark_delivered("j1")
    done = await db.jobs.get("j1")
    assert done is not None
    assert (done.state, done.attempts, done.error) == ("succeeded", 2, None)
    assert (done.submitted_at_ms, done.queued_at_ms, done.started_at_ms) == (1000, 1300, 1400)
    assert (done.finished_at_ms, done.delivered_at_ms) == (1500, 1600)


async def test_queue_waits_report_each_start_once_and_the_jobs_still_waiting(
    db: Database, clock: FakeClock
) -> None:
    """A first pass sees only queued jobs; later passes report each new start's wait once
    (a requeued job's from its requeue), whatever happened to the job after it started."""
    for job_id in ("a", "b", "c"):
        await db.jobs.insert(job_id, 1, SPEC, "realtime")
        await db.jobs.mark_queued(job_id)
    clock.advance(400)
    first = await db.jobs.queue_waits()
    assert (first.started_ms, sorted(first.waiting_ms)) == ((), [400, 400, 400])
    clock.advance(100)
    await db.jobs.mark_started("a")
    await db.jobs.mark_finished("a", "succeeded")
    await db.jobs.mark_started("b")
    second = await db.jobs.queue_waits(first.cursor)
    assert (second.started_ms, second.waiting_ms) == ((500, 500), (500,))
    clock.advance(100)
    await db.jobs.mark_queued("b")  # preempted
    clock.advance(50)
    await db.jobs.mark_started("b")
    third = await db.jobs.queue_waits(second.cursor)
    assert (third.started_ms, third.waiting_ms) == ((50,), (650,))
    assert (await db.jobs.queue_waits(third.cursor)).started_ms == ()


async def test_queue_waits_read_only_the_tail_of_the_jobs_table(db: Database) -> None:
    """The cursor starts at the oldest job that can still start (or past the last job),
    so finished history is not read again."""
    for job_id in ("old", "waiting", "new"):
        await db.jobs.insert(job_id, 1, SPEC, "realtime")
    await db.jobs.mark_finished("old", "succeeded")
    await db.jobs.mark_queued("waiting")
    await db.jobs.mark_finished("new", "cancelled")
    cursor = (await db.jobs.queue_waits()).cursor
    await db.jobs.mark_started("waiting")
    await db.jobs.mark_finished("waiting", "succeeded")
    assert cursor.min_rowid == 2
    assert (await db.jobs.queue_waits()).cursor.min_rowid == 4


async def test_failed_job_records_its_error(db: Database) -> None:
    """mark_finished('failed', error) keeps the error text."""
    await db.jobs.insert("j1", 1, SPEC, "batch")
    await db.jobs.mark_finished("j1", "failed", "out of memory")
    job = await db.jobs.get("j1")
    assert job is not None
    assert (job.state, job.error) == ("failed", "out of memory")


@pytest.mark.parametrize("state", ["running", "queued", "submitted", "done"])
async def test_mark_finished_with_non_final_state_raises(db: Database, state: str) -> None:
    """Only succeeded, failed or cancelled can finish a job; the row is left unchanged."""
    await db.jobs.insert("j1", 1, SPEC, "batch")
    with pytest.raises(ValueError, match="final state"):
        await db.jobs.mark_finished("j1", state)
    job = await db.jobs.get("j1")
    assert job is not None
    assert (job.state, job.finished_at_ms) == ("submitted", None)


async def test_unknown_job_raises_not_found(db: Database) -> None:
    """Every mark_* on a job that does not exist raises NotFoundError; get returns None."""
    assert await db.jobs.get("nope") is None
    for mark in (db.jobs.mark_queued, db.jobs.mark_started, db.jobs.mark_delivered):
        with pytest.raises(NotFoundError, match="nope"):
            await mark("nope")
    with pytest.raises(NotFoundError):
        await db.jobs.mark_finished("nope", "cancelled")


async def test_finished_job_cannot_be_requeued(db: Database) -> None:
    """mark_queued on a cancelled job raises StateConflictError and keeps it cancelled."""
    await db.jobs.insert("j1", 1, SPEC, "batch")
    await db.jobs.mark_finished("j1", "cancelled")
    with pytest.raises(StateConflictError, match="cancelled"):
        await db.jobs.mark_queued("j1")
    job = await db.jobs.get("j1")
    assert job is not None
    assert job.state == "cancelled"


async def test_insert_rejects_unknown_kind_and_duplicate_id(db: Database) -> None:
    """An unknown kind is a ValueError; reusing a job id violates the primary key."""
    with pytest.raises(ValueError, match="kind"):
        await db.jobs.insert("j1", 1, SPEC, "batch", kind="remix")
    await db.jobs.insert("j1", 1, SPEC, "batch")
    with pytest.raises(sqlite3.IntegrityError):
        await db.jobs.insert("j1", 1, SPEC, "batch")


async def test_variation_links_its_parent(db: Database) -> None:
    """A variation records its kind and parent; an unknown parent is refused."""
    await db.jobs.insert("parent", 1, SPEC, "realtime")
    child = await db.jobs.insert(
        "child", 1, SPEC, "realtime", kind="variation", parent_job_id="parent"
    )
    assert (child.kind, child.parent_job_id) == ("variation", "parent")
    with pytest.raises(sqlite3.IntegrityError):
        await db.jobs.insert("orphan", 1, SPEC, "realtime", kind="upscale", parent_job_id="gone")
    assert await db.jobs.get("orphan") is None


async def test_job_listings_and_counts(db: Database, clock: FakeClock) -> None:
    """list_by_state is oldest first, list_for_user newest first, counts cover every state."""
    for job_id in ("a", "b", "c"):
        await db.jobs.insert(job_id, 1, SPEC, "batch")
        clock.advance(10)
    await db.jobs.insert("other", 2, SPEC, "batch")
    await db.jobs.mark_queued("a")
    await db.jobs.mark_queued("c")
    await db.jobs.mark_started("b")

    assert [j.id for j in await db.jobs.list_by_state("queued")] == ["a", "c"]
    assert [j.id for j in await db.jobs.list_by_state("queued", "running")] == ["a", "b", "c"]
    assert await db.jobs.list_by_state() == []
    with pytest.raises(ValueError, match="unknown job states"):
        await db.jobs.list_by_state("pending")
    assert [j.id for j in await db.jobs.list_for_user(1)] == ["c", "b", "a"]
    assert [j.id for j in await db.jobs.list_for_user(1, limit=2)] == ["c", "b"]
    assert await db.jobs.count_by_state() == {
        "submitted": 1,
        "queued": 2,
        "running": 1,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }


async def test_concurrent_inserts_all_succeed(db: Database) -> None:
    """Twenty inserts racing on one connection all commit, none interleaved or lost."""
    await asyncio.gather(
        *(
            db.jobs.insert(f"job-{n}", n % 3, SPEC, "realtime", guild_id=n % 2 + 100)
            for n in range(20)
        )
    )
    assert (await db.jobs.count_by_state())["submitted"] == 20
    assert {u for u in (0, 1, 2) if await db.users.get(u) is not None} == {0, 1, 2}


# Meta and checkpoint


async def test_job_meta_and_checkpoint_are_kept(db: Database) -> None:
    """A job's meta comes back from its row; its checkpoint is saved and cleared."""
    await db.jobs.insert("j", 1, "{}", "realtime", meta={"strength": 0.5})
    row = await db.jobs.get("j")
    assert row is not None and row.meta == {"strength": 0.5}
    await db.jobs.save_checkpoint("j", b"\x00state")
    assert await db.jobs.checkpoint("j") == b"\x00state"
    await db.jobs.save_checkpoint("j", None)
    assert await db.jobs.checkpoint("j") is None


# Images


async def test_image_for_unknown_job_is_rejected(db: Database) -> None:
    """The images.job_id foreign key refuses a row for a job that does not exist."""
    with pytest.raises(aiosqlite.IntegrityError) as caught:
        await db.images.add("ghost", 0, "/x.png", "0" * 64, 64, 64)
    assert isinstance(caught.value, sqlite3.IntegrityError)
    assert "FOREIGN KEY" in str(caught.value)
    assert await db.images.list_for_job("ghost") == []


async def test_images_are_listed_grid_first(db: Database) -> None:
    """list_for_job orders by index, so the grid (-1) comes before samples 0, 1, ..."""
    await db.jobs.insert("j1", 1, SPEC, "realtime")
    for idx in (1, 0, -1):
        await db.images.add("j1", idx, f"/img/{idx}.png", f"{idx + 1}" * 64, 512, 512)
    assert [image.idx for image in await db.images.list_for_job("j1")] == [-1, 0, 1]


async def test_image_add_replaces_same_index(db: Database) -> None:
    """Adding an index again (a retried attempt) replaces the earlier row."""
    await db.jobs.insert("j1", 1, SPEC, "realtime")
    await db.images.add("j1", 0, "/old.png", "a" * 64, 64, 64)
    await db.images.add("j1", 0, "/new.png", "b" * 64, 128, 96)
    image = await db.images.get("j1", 0)
    assert image is not None
    assert (image.path, image.sha256, image.width, image.height) == ("/new.png", "b" * 64, 128, 96)
    assert await db.images.get("j1", 1) is None
    assert len(await db.images.list_for_job("j1")) == 1
