"""Assembles the backend for one process: storage, queue, catalog, service and workers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from backend.catalog import ModelCatalog
from backend.clock import monotonic_s
from backend.degrade import DegradeController
from backend.events import EventBus
from backend.queue import JobQueue, make_queue
from backend.ratelimit import Admission, make_buckets
from backend.service import GenerationService
from config.settings import QueueBackend, Settings
from storage.db import Database
from storage.images import ImageStore

if TYPE_CHECKING:
    from backend.worker import DeviceWorker

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Backend:
    settings: Settings
    db: Database
    images: ImageStore
    queue: JobQueue
    catalog: ModelCatalog
    events: EventBus
    service: GenerationService
    degrade: DegradeController
    workers: list[DeviceWorker] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_backend(settings: Settings, *, local_worker: bool = True) -> AsyncIterator[Backend]:
    """The backend with, in the embedded mode, a worker for this machine's device.

    Torch is imported only when a local worker starts, so a front end without one
    stays light.
    """
    catalog = ModelCatalog(settings)
    async with Database.open(settings.database_path) as db:
        images = ImageStore(settings.images_dir)
        queue = make_queue(settings)
        events = EventBus()
        degrade = DegradeController(settings, db, monotonic_s)
        await degrade.load()
        redis_client = None
        if settings.queue.backend is QueueBackend.REDIS:
            from redis.asyncio import Redis

            redis_client = Redis.from_url(settings.queue.redis_url.get_secret_value())
        service = GenerationService(
            settings,
            db,
            queue,
            catalog,
            events,
            admission=Admission(settings, make_buckets(settings, redis_client)),
            steps_factor=lambda: degrade.restrictions.steps_factor,
        )
        backend = Backend(settings, db, images, queue, catalog, events, service, degrade)
        try:
            restored = await service.reconcile()
            if restored:
                log.warning("jobs_reconciled", count=restored)
            async with contextlib.AsyncExitStack() as stack:
                if local_worker:
                    await stack.enter_async_context(_local_worker(backend))
                yield backend
        finally:
            await queue.close()
            if redis_client is not None:
                await redis_client.aclose()


@contextlib.asynccontextmanager
async def _local_worker(backend: Backend) -> AsyncIterator[None]:
    """One worker per device of this machine: every CUDA device, else the CPU."""
    import socket

    from backend.engine.device import make_engine_factory
    from backend.engine.registry import ModelRegistry, pick_devices
    from backend.worker import DeviceWorker, WorkerConfig

    settings = backend.settings
    engine = settings.engine
    if engine.torch_threads is not None:
        import torch

        torch.set_num_threads(engine.torch_threads)
    async with contextlib.AsyncExitStack() as stack:
        for device in pick_devices(engine.device):
            registry = ModelRegistry(settings, backend.catalog, device)
            config = WorkerConfig(
                worker_id=f"{socket.gethostname()}:{device}",
                device_name=str(device),
                lease_s=settings.queue.lease_s,
                capacity_rows=engine.max_batch_rows,
                variation_strength=engine.variation_strength,
                upscale_strength=engine.upscale_strength,
                max_source_pixels=engine.max_source_pixels,
                allow=lambda: backend.degrade.restrictions.claim_filter,
            )
            worker = DeviceWorker(
                config,
                backend.queue,
                make_engine_factory(registry, engine, str(device)),
                backend.catalog,
                backend.db,
                backend.images,
                backend.events,
            )
            log.info("worker_starting", device=str(device), worker_id=config.worker_id)
            await stack.enter_async_context(worker)
            backend.workers.append(worker)
        try:
            yield
        finally:
            backend.workers.clear()
