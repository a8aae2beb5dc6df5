"""The device worker: runs claimed jobs, stores results, fails a bad job alone."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from PIL import Image

from backend.app import Backend, open_backend
from backend.errors import JobFailedError
from backend.models import JobSpec
from backend.worker import DeviceWorker, WorkerConfig
from config.settings import Settings, load_settings


class FakeEngine:
    """Solid-colour samples; a prompt containing 'explode' raises, like a failing model."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def generate(
        self,
        spec: JobSpec,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]:
        self.threads.add(threading.current_thread().name)
        if "explode" in spec.prompt:
            raise RuntimeError("latents became NaN")
        for step in range(1, 3):
            if on_step is not None:
                on_step(step, 2)
        return [
            Image.new("RGB", (spec.width, spec.height), (index * 60, 0, 0))
            for index in range(spec.n)
        ]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path)


@pytest.fixture
async def backend(settings: Settings) -> AsyncIterator[tuple[Backend, FakeEngine]]:
    engine = FakeEngine()
    async with open_backend(settings, local_worker=False) as backend:
        worker = DeviceWorker(
            WorkerConfig("test-worker", poll_s=0.05),
            backend.queue,
            engine,
            backend.catalog,
            backend.db,
            backend.images,
            backend.events,
        )
        async with worker:
            yield backend, engine


def spec(prompt: str, n: int = 4) -> JobSpec:
    return JobSpec(prompt=prompt, seed=1, width=16, height=8, n=n)


async def test_job_runs_on_device_thread_and_is_stored(
    backend: tuple[Backend, FakeEngine],
) -> None:
    """A job runs off the event loop; its grid and samples are stored and recorded."""
    app, engine = backend
    job_id = app.service.new_job_id()
    subscription = app.service.follow(job_id)
    await app.service.submit(spec("a cat"), user_id=1, job_id=job_id)
    result = await app.service.wait(subscription)
    assert engine.threads and all(name.startswith("device-") for name in engine.threads)
    with Image.open(result.grid_path) as grid:
        assert grid.size == (32, 16)
    assert len(result.sample_paths) == 4
    row = await app.db.jobs.get(job_id)
    assert row is not None and row.state == "succeeded" and row.attempts == 1
    assert row.started_at_ms is not None and row.finished_at_ms is not None
    assert [image.idx for image in await app.db.images.list_for_job(job_id)] == [-1, 0, 1, 2, 3]


async def test_failing_job_fails_alone(backend: tuple[Backend, FakeEngine]) -> None:
    """A job whose generation raises is recorded failed with its reason; the next one runs."""
    app, _engine = backend
    bad_id, good_id = app.service.new_job_id(), app.service.new_job_id()
    bad, good = app.service.follow(bad_id), app.service.follow(good_id)
    await app.service.submit(spec("explode please"), user_id=1, job_id=bad_id)
    await app.service.submit(spec("a calm sea"), user_id=1, job_id=good_id)
    with pytest.raises(JobFailedError, match="NaN"):
        await app.service.wait(bad)
    assert (await app.service.wait(good)).grid_path
    row = await app.db.jobs.get(bad_id)
    assert row is not None and row.state == "failed" and row.error is not None
    assert "NaN" in row.error


async def test_progress_events_carry_steps_and_eta(backend: tuple[Backend, FakeEngine]) -> None:
    """Step events report step, total and an ETA, in order, before the final event."""
    app, _engine = backend
    job_id = app.service.new_job_id()
    subscription = app.service.follow(job_id)
    await app.service.submit(spec("steps", n=1), user_id=1, job_id=job_id)
    events = [event async for event in subscription]
    steps = [(e.step, e.total) for e in events if e.kind.value == "step"]
    assert steps == [(1, 2), (2, 2)]
    assert next(e.kind.value for e in events) == "queued"
    assert events[-1].kind.value == "succeeded"
