"""Assembles the backend for one process: storage, queue, catalog, service and workers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from backend.admission import make_buckets
from backend.admission.limits import Admission
from backend.catalog import ModelCatalog
from backend.clock import monotonic_s
from backend.degrade import make_level_store
from backend.degrade.controller import DegradeController
from backend.degrade.loadwatch import LoadWatcher
from backend.events import EventBus, make_event_bus
from backend.queue import JobQueue, make_queue
from backend.service import GenerationService
from config.settings import QueueBackend, Settings
from storage.db import Database
from storage.images import ImageStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from backend.worker.worker import DeviceWorker

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Backend:
    """The running backend's parts, built by :func:`open_backend`."""

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
    stays light. The load watcher samples from the start; workers join its device
    list as they start.
    """
    catalog = ModelCatalog(settings)
    async with Database.open(settings.database_path) as db, contextlib.AsyncExitStack() as stack:
        images = ImageStore(settings.images_dir)
        redis_client = await stack.enter_async_context(shared_redis(settings))
        queue = make_queue(settings)
        stack.push_async_callback(queue.close)
        events = make_event_bus(settings.queue)
        degrade = await load_degrade(settings, db, redis_client)
        service = GenerationService(
            settings.scheduler,
            settings.engine,
            db,
            queue,
            catalog,
            events,
            admission=Admission(
                settings.scheduler.tiers,
                settings.admission,
                make_buckets(settings.queue, redis_client),
            ),
            restrictions=lambda: degrade.restrictions,
        )
        backend = Backend(settings, db, images, queue, catalog, events, service, degrade)
        restored = await service.reconcile()
        if restored:
            log.warning("jobs_reconciled", count=restored)
        await stack.enter_async_context(LoadWatcher(degrade, queue, db, backend.workers))
        if local_worker:
            await stack.enter_async_context(_local_worker(backend))
        yield backend


@contextlib.asynccontextmanager
async def shared_redis(settings: Settings) -> AsyncIterator[Redis | None]:
    """The client the level store and the rate limits share in Redis mode; else None."""
    if settings.queue.backend is not QueueBackend.REDIS:
        yield None
        return
    from redis.asyncio import Redis

    client = Redis.from_url(settings.queue.redis_url.get_secret_value())
    try:
        yield client
    finally:
        await client.aclose()


async def load_degrade(
    settings: Settings, db: Database, redis_client: Redis | None
) -> DegradeController:
    """The degradation controller with the override restored (shared in Redis mode)."""
    degrade = DegradeController(
        settings.degrade,
        settings.scheduler.tiers,
        db,
        monotonic_s,
        store=make_level_store(settings.queue, redis_client),
    )
    await degrade.load()
    return degrade


@contextlib.asynccontextmanager
async def _local_worker(backend: Backend) -> AsyncIterator[None]:
    """One worker per device of this machine: every CUDA device, else the CPU."""
    import socket

    from backend.engine.factory import make_engine_factory
    from backend.engine.hardware import pick_devices
    from backend.engine.registry import ModelRegistry
    from backend.scheduling.preemption import Rules
    from backend.worker.ledger import make_ledger
    from backend.worker.worker import DeviceWorker, WorkerConfig

    settings = backend.settings
    ledger = make_ledger(settings.queue, backend.db, backend.images)
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
                preemption=Rules.from_settings(settings.scheduler),
                on_step=backend.service.record_step,
                on_start=backend.service.job_started,
            )
            worker = DeviceWorker(
                config,
                backend.queue,
                make_engine_factory(registry, engine, str(device)),
                backend.catalog,
                ledger,
                backend.events,
            )
            log.info("worker_starting", device=str(device), worker_id=config.worker_id)
            await stack.enter_async_context(worker)
            backend.workers.append(worker)
        workers = list(backend.workers)
        if workers:
            backend.service.device_delay_s = lambda job: min(
                worker.start_delay_s(job) for worker in workers
            )
        try:
            yield
        finally:
            backend.service.device_delay_s = None
            backend.workers.clear()
