"""Assembles the backend for one process: storage, queue, catalog, service and workers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from backend.catalog import ModelCatalog
from backend.events import EventBus
from backend.queue import JobQueue, make_queue
from backend.service import GenerationService
from config.settings import Settings
from storage.db import Database
from storage.images import ImageStore

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
        service = GenerationService(db, queue, catalog, events)
        backend = Backend(settings, db, images, queue, catalog, events, service)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if local_worker:
                    await stack.enter_async_context(_local_worker(backend))
                yield backend
        finally:
            await queue.close()


@contextlib.asynccontextmanager
async def _local_worker(backend: Backend) -> AsyncIterator[None]:
    import socket

    from backend.engine.registry import ModelRegistry, pick_device
    from backend.engine.runner import Engine
    from backend.worker import DeviceWorker, WorkerConfig

    settings = backend.settings
    if settings.engine.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.engine.torch_threads)
    device = pick_device(settings.engine.device)
    registry = ModelRegistry(settings, backend.catalog, device)
    config = WorkerConfig(
        worker_id=f"{socket.gethostname()}:{device}",
        device_name=str(device),
        lease_s=settings.queue.lease_s,
    )
    worker = DeviceWorker(
        config,
        backend.queue,
        Engine(registry),
        backend.catalog,
        backend.db,
        backend.images,
        backend.events,
    )
    log.info("worker_starting", device=str(device), worker_id=config.worker_id)
    async with worker:
        yield
