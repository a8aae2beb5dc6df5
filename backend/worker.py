"""A device worker: claims jobs from the queue, runs them on its device, stores the results."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import structlog
from PIL import Image

from backend.catalog import ModelCatalog
from backend.clock import wall_ms
from backend.events import EventBus, EventKind, JobEvent
from backend.grid import encode_png, make_grid
from backend.models import Job, JobSpec, JobState
from backend.queue.base import JobQueue, Lease
from storage.db import Database
from storage.images import ImageStore

log = structlog.get_logger(__name__)

GRID_INDEX = -1


class ImageGenerator(Protocol):
    """What a worker runs jobs on (the engine, or a fake in scheduler tests)."""

    def generate(
        self,
        spec: JobSpec,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]: ...


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker_id: str
    device_name: str = "cpu"
    lease_s: float = 60.0
    poll_s: float = 1.0


class DeviceWorker:
    """Owns one device thread and the loop that feeds it. Use as an async context manager."""

    def __init__(
        self,
        config: WorkerConfig,
        queue: JobQueue,
        engine: ImageGenerator,
        catalog: ModelCatalog,
        db: Database,
        images: ImageStore,
        events: EventBus,
    ) -> None:
        self.config = config
        self._queue = queue
        self._engine = engine
        self._catalog = catalog
        self._db = db
        self._images = images
        self._events = events
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"device-{config.device_name}")
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> DeviceWorker:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"worker-{self.config.worker_id}")

    async def close(self, *, drain_s: float = 30.0) -> None:
        """Stop claiming, let the running job finish for up to ``drain_s``, then cancel."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), drain_s)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._thread.shutdown(wait=True, cancel_futures=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            lease = await self._queue.claim(
                self.config.worker_id, lease_s=self.config.lease_s, wait_s=self.config.poll_s
            )
            if lease is not None:
                await self._process(lease)

    async def _process(self, lease: Lease) -> None:
        job = lease.job
        with structlog.contextvars.bound_contextvars(
            job_id=job.id, user_id=job.user_id, lane=job.lane.value, device=self.config.device_name
        ):
            await self._db.jobs.mark_started(job.id)
            self._publish(job.id, EventKind.STARTED)
            log.info("job_started", attempt=lease.attempt)
            heartbeat = asyncio.create_task(self._heartbeat(lease))
            started = time.monotonic()
            try:
                await self._execute(job)
            except Exception as exc:  # a failing job fails alone; the worker goes on
                reason = str(exc) or type(exc).__name__
                await asyncio.shield(self._finish_failed(job, reason))
                log.warning("job_failed", error=reason, run_s=round(time.monotonic() - started, 3))
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            with contextlib.suppress(Exception):
                await self._queue.ack(lease)

    async def _execute(self, job: Job) -> None:
        spec = self._catalog.resolve(job.spec)
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def on_step(step: int, total: int) -> None:
            elapsed = time.monotonic() - started
            eta = elapsed / step * (total - step) if step else None
            event = JobEvent(job.id, EventKind.STEP, step, total, eta, at_ms=wall_ms())
            loop.call_soon_threadsafe(self._events.publish, event)

        samples = await loop.run_in_executor(self._thread, self._engine.generate, spec, on_step)
        paths = await self._store(job, samples)
        await self._db.jobs.mark_finished(job.id, JobState.SUCCEEDED.value)
        run_s = time.monotonic() - started
        self._publish(job.id, EventKind.SUCCEEDED, images=tuple(paths))
        log.info(
            "job_finished",
            state="succeeded",
            model=spec.model,
            steps=spec.steps,
            n=spec.n,
            width=spec.width,
            height=spec.height,
            run_s=round(run_s, 3),
            grid=paths[0],
        )

    async def _store(self, job: Job, samples: list[Image.Image]) -> list[str]:
        """Grid first, then each sample; files by content hash, rows in SQLite."""
        paths = []
        ordered = [(GRID_INDEX, make_grid(samples)), *enumerate(samples)]
        for index, image in ordered:
            stored = await self._images.write_async(encode_png(image), ".png")
            await self._db.images.add(
                job.id, index, str(stored.path), stored.sha256, image.width, image.height
            )
            paths.append(str(stored.path))
        return paths

    async def _finish_failed(self, job: Job, reason: str) -> None:
        await self._db.jobs.mark_finished(job.id, JobState.FAILED.value, reason)
        self._publish(job.id, EventKind.FAILED, error=reason)

    async def _heartbeat(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            lease = await self._queue.renew(lease, lease_s=self.config.lease_s)

    def _publish(self, job_id: str, kind: EventKind, **fields: object) -> None:
        self._events.publish(JobEvent(job_id, kind, at_ms=wall_ms(), **fields))  # type: ignore[arg-type]
