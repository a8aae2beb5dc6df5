"""On the real engine: follow-up jobs from a finished grid (variation, upscale and
reroll), and jobs a crash left recorded but never queued."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from backend.app import Backend, open_backend
from backend.clock import monotonic_s
from backend.errors import BadInputError
from backend.models import JobSpec
from backend.service import JobKind
from config.settings import load_settings
from storage.db import Database

# Waiting longer than this for the tiny model's jobs is a hang, not slowness.
HANG_S = 60.0


@pytest.fixture
async def app(engine_env: Path) -> AsyncIterator[Backend]:
    async with open_backend(load_settings()) as backend:
        yield backend


async def finished_job(app: Backend) -> str:
    job_id = app.service.new_job_id()
    subscription = app.service.follow(job_id)
    spec = JobSpec(prompt="a lighthouse", seed=5, width=64, height=64, n=2, steps=4)
    await app.service.submit(spec, user_id=7, guild_id=3, channel_id=4, job_id=job_id)
    await app.service.wait(subscription)
    return job_id


async def run_derived(app: Backend, parent: str, kind: JobKind, index: int | None) -> str:
    job_id = app.service.new_job_id()
    subscription = app.service.follow(job_id)
    await app.service.derive(
        parent, kind, user_id=7, index=index, job_id=job_id, rng=random.Random(1)
    )
    await app.service.wait(subscription)
    return job_id


async def test_variation_upscale_and_reroll(app: Backend) -> None:
    """Each follow-up records its kind and parent and renders the expected images."""
    parent = await finished_job(app)
    variation = await run_derived(app, parent, JobKind.VARIATION, 1)
    upscale = await run_derived(app, parent, JobKind.UPSCALE, 0)
    reroll = await run_derived(app, parent, JobKind.REROLL, None)
    rows = {job_id: await app.db.jobs.get(job_id) for job_id in (variation, upscale, reroll)}
    assert all(row is not None and row.parent_job_id == parent for row in rows.values())
    assert [row.kind for row in rows.values() if row] == ["variation", "upscale", "reroll"]
    upscaled = await app.db.images.list_for_job(upscale)
    # The sample keeps its pixels; the grid shows it scaled 2x to a 256 px tile.
    assert [(image.idx, image.width, image.height) for image in upscaled] == [
        (-1, 256, 256),
        (0, 128, 128),
    ]
    with Image.open(upscaled[1].path) as image:
        assert image.size == (128, 128)
    assert len(await app.db.images.list_for_job(variation)) == 3
    reroll_row = rows[reroll]
    parent_row = await app.db.jobs.get(parent)
    assert reroll_row is not None and parent_row is not None
    assert (
        JobSpec.from_json(reroll_row.spec_json).seed != JobSpec.from_json(parent_row.spec_json).seed
    )


async def test_follow_up_of_missing_or_unfinished_job_is_refused(app: Backend) -> None:
    """Deriving from an unknown job or a sample index out of range is a clear error."""
    with pytest.raises(BadInputError, match="no job"):
        await app.service.derive("nope", JobKind.REROLL, user_id=1)
    parent = await finished_job(app)
    with pytest.raises(BadInputError, match=r"sample index must be 0\.\.1"):
        await app.service.derive(parent, JobKind.VARIATION, user_id=1, index=2)


async def test_a_job_recorded_but_never_queued_runs_after_a_restart(engine_env: Path) -> None:
    """A crash between recording a job and queuing it leaves it submitted, counted
    against the user's queue cap for good; the next start queues it, it runs, and it
    stops counting."""
    settings = load_settings()
    spec = JobSpec(prompt="a lighthouse", seed=5, width=64, height=64, n=1, steps=2)
    async with Database.open(settings.database_path) as db:
        await db.jobs.insert("cut-short", 8, spec.to_json(), "realtime", meta={"speed": "fast"})
        assert await db.jobs.count_waiting(8) == 1
    async with open_backend(settings) as app:
        row = await app.db.jobs.get("cut-short")
        assert row is not None and row.state != "submitted"
        deadline = monotonic_s() + HANG_S
        while (row := await app.db.jobs.get("cut-short")) is not None and row.state != "succeeded":
            assert row.state in ("queued", "running"), row.error
            assert monotonic_s() < deadline, "the reconciled job did not finish"
            await asyncio.sleep(0.05)
        assert await app.db.jobs.count_waiting(8) == 0
        assert len(await app.db.images.list_for_job("cut-short")) == 2
