"""Assembles the backend for one process: storage, queue, catalog, service and workers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import structlog

from backend.admission import make_buckets
from backend.admission.limits import Admission
from backend.catalog import ModelCatalog
from backend.clock import monotonic_s
from backend.degrade import make_level_store
from backend.degrade.controller import DegradeController
from backend.degrade.loadwatch import LoadWatcher
from backend.errors import BadInputError, QueueUnavailableError
from backend.events import EventBus, make_event_bus
from backend.models import Lane
from backend.operations import LanePauses, Parts
from backend.queue import JobQueue, RedisQueue, make_queue
from backend.scheduling.fairness import ClaimFilter
from backend.scheduling.lanes import CostModel, batching_pays
from backend.service import GenerationService
from backend.tasks import settle, stop
from config.settings import QueueBackend, QueueSettings, Settings, mask_url
from storage.db import Database
from storage.errors import DataDirInUseError
from storage.images import ImageStore
from storage.lock import hold_data_dir

if TYPE_CHECKING:
    import torch
    from redis.asyncio import Redis

    from backend.engine.registry import ModelRegistry
    from backend.worker.ledger.base import JobLedger
    from backend.worker.worker import DeviceWorker

log = structlog.get_logger(__name__)

# How long running jobs may go on when the backend closes before they are checkpointed
# and requeued; an interrupted owner (a signal, a cancelled task) gives them none.
DRAIN_S = 30.0
# A Redis that does not answer a PING in this long counts as unreachable at start-up.
REDIS_PING_TIMEOUT_S = 5.0
# How long closing waits for a queue check under way before cancelling it.
WATCH_CLOSE_S = 5.0
# A queue check that failed for another reason than Redis being away is tried again
# after the interval, doubled per failure in a row up to this.
WATCH_BACKOFF_MAX_S = 60.0


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
    # Lanes an admin paused: their queued jobs stay queued and nothing of them starts.
    pauses: LanePauses
    workers: list[DeviceWorker] = field(default_factory=list)
    # The model registry of each local device (admin model load and unload).
    registries: list[ModelRegistry] = field(default_factory=list)
    # What :meth:`stop` gives running jobs by default; :meth:`interrupt` sets it to 0.
    drain_s: float = DRAIN_S
    _stopping: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @property
    def held_jobs(self) -> int:
        """How many jobs this process's workers hold (running, or claimed to run next)."""
        return sum(len(worker.held_job_ids) for worker in self.workers)

    def parts(self) -> Parts:
        """What admin operations act on (:class:`backend.operations.Operations`)."""
        return Parts(
            self.db,
            self.queue,
            self.degrade,
            self.service,
            self.catalog,
            self.workers,
            self.registries,
            self.pauses,
        )

    @property
    def paused_lanes(self) -> set[Lane]:
        """The lanes an admin paused, as this process follows them."""
        return self.pauses.lanes

    def claim_filter(self) -> ClaimFilter:
        """What this process's devices may start now: the degradation level's filter
        without the paused lanes."""
        restricted = self.degrade.restrictions.claim_filter
        if not self.paused_lanes:
            return restricted
        return replace(restricted, lanes=restricted.lanes - frozenset(self.paused_lanes))

    def interrupt(self) -> None:
        """Save the jobs this process holds at their next step instead of letting them
        finish: the coming stop has no drain, and a stop under way cuts its drain short.
        (Its workers no longer claim, so what they give back stays queued.)"""
        self.drain_s = 0.0
        if self._stopping is None:
            return
        for worker in self.workers:
            for job_id in worker.held_job_ids:
                worker.evict(job_id)

    async def stop(self, drain_s: float | None = None) -> None:
        """Close this process's workers, once: they stop claiming, running jobs get
        ``drain_s`` (default :attr:`drain_s`) to finish, and the rest go back to the
        queue with their checkpoints at their next step. A later call waits for the
        first; ``drain_s=0`` also cuts a stop under way short."""
        if drain_s is not None and drain_s <= 0:
            self.interrupt()
        if self._stopping is None:
            wait_s = self.drain_s if drain_s is None else drain_s
            self._stopping = asyncio.create_task(self._close_workers(wait_s), name="backend-stop")
        # Closing goes on if this caller is cancelled: jobs must reach the queue.
        await asyncio.shield(self._stopping)

    async def _close_workers(self, drain_s: float) -> None:
        workers = list(self.workers)
        try:
            results = await asyncio.gather(
                *(worker.close(drain_s=drain_s) for worker in workers), return_exceptions=True
            )
        finally:
            self.service.device_delay_s = None
            self.service.held_here = lambda _job_id: False
            self.workers.clear()
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException):
                # Its jobs stay running in SQLite; the next start reconciles them.
                log.error("worker_close_failed", worker_id=worker.config.worker_id, exc_info=result)


@contextlib.asynccontextmanager
async def open_backend(settings: Settings, *, local_worker: bool = True) -> AsyncIterator[Backend]:
    """The backend with, in the embedded mode, a worker for this machine's device.

    Two checks come before the database is opened. In Redis mode, Redis must answer
    (BadInputError naming ``queue.redis_url`` otherwise; nothing is written). Then the
    data directory's lock (:mod:`storage.lock`): with the memory queue this process
    holds the directory alone, since another would take its running jobs for orphans,
    so a second one is refused at once (BadInputError naming the holder and pointing at
    Redis mode); with the Redis queue no process holds it alone and many share it (their
    shared locks only keep a memory-queue process out). So start-up reconciles only
    jobs whose process is gone. In Redis mode a :class:`QueueWatchdog` then queues
    again what Redis loses while the process runs.

    Torch is imported only when a local worker starts, so a front end without one
    stays light. The load watcher samples from the start; workers join its device
    list as they start. On the way out the workers close with :attr:`Backend.drain_s`
    for running jobs to finish; leaving by an interruption (cancelled, Ctrl-C, exit)
    saves them at their next step instead.
    """
    catalog = ModelCatalog(settings)
    async with contextlib.AsyncExitStack() as stack:
        redis_client = await stack.enter_async_context(shared_redis(settings))
        if redis_client is not None:
            await check_reachable(redis_client, settings.queue)
        _lock_data_dir(stack, settings)
        db = await stack.enter_async_context(Database.open(settings.database_path))
        images = ImageStore(settings.images_dir)
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
            # Other processes' workers hold leases of a shared queue only.
            shared_lease_s=(
                settings.queue.lease_s if settings.queue.backend is QueueBackend.REDIS else None
            ),
        )
        pauses = LanePauses(db)
        await pauses.refresh()
        backend = Backend(settings, db, images, queue, catalog, events, service, degrade, pauses)
        try:
            if isinstance(queue, RedisQueue):
                # Before the start-up reconcile: a loss from then on is seen.
                interval_s = settings.queue.reconcile_interval_s
                await stack.enter_async_context(QueueWatchdog(queue, service, interval_s))
            restored = await service.reconcile()
            if restored:
                log.warning("jobs_reconciled", count=restored)
            await stack.enter_async_context(
                LoadWatcher(degrade, queue, db, backend.workers, catch_up=pauses.refresh)
            )
            stack.push_async_callback(backend.stop)
            if local_worker:
                await _start_local_workers(backend)
            yield backend
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            backend.interrupt()
            raise


class QueueWatchdog:
    """Queues again the jobs SQLite holds as queued once Redis has lost the queue's
    data (restarted without persistence, or flushed), which nothing else would until a
    restart; an async context manager that owns its task.

    Every ``interval_s`` it asks the queue (one script call) whether its epoch is gone,
    and then reconciles, running jobs aside: their workers queue them anew at their
    next renewal. A check that fails is logged and tried again: at the next interval
    while Redis is away, with a growing delay on any other error; a reconcile that
    fails is tried again at the next check.
    """

    def __init__(self, queue: RedisQueue, service: GenerationService, interval_s: float) -> None:
        self.interval_s = interval_s
        self._queue = queue
        self._service = service
        # A loss was seen and its reconcile has not completed yet.
        self._due = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> QueueWatchdog:
        try:
            await self._queue.lost_data()  # the first call reads (or sets) the epoch
        except Exception:
            # A loss before the epoch is read cannot be told from a fresh Redis: the
            # first check that works reconciles anyway.
            log.warning("queue_watch_failed", exc_info=True)
            self._due = True
        self._task = asyncio.create_task(self._run(), name="queue-watchdog")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        if await settle({task}, WATCH_CLOSE_S):
            await stop({task}, WATCH_CLOSE_S)

    async def check(self) -> int:
        """One check: if Redis lost the queue's data, queue the lost jobs again (the
        epoch is set again by asking); how many were queued."""
        if await self._queue.lost_data():
            log.warning("queue_data_lost", namespace=self._queue.namespace)
            self._due = True
        if not self._due:
            return 0
        restored = await self._service.reconcile(running=False)
        self._due = False
        if restored:
            log.warning("jobs_reconciled", count=restored)
        return restored

    async def _run(self) -> None:
        delay_s = self.interval_s
        while not await self._stopped_within(delay_s):
            try:
                await self.check()
            except QueueUnavailableError as exc:
                # Redis is away: the next check costs no more than this one did.
                log.warning("queue_watch_unavailable", error=str(exc))
                delay_s = self.interval_s
            except Exception:
                delay_s = min(delay_s * 2, max(self.interval_s, WATCH_BACKOFF_MAX_S))
                log.exception("queue_watch_failed", retry_in_s=delay_s)
            else:
                delay_s = self.interval_s

    async def _stopped_within(self, timeout_s: float) -> bool:
        # An event, not cancellation alone: a client call that swallows a cancellation
        # must not keep the loop alive.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout_s)
        return self._stopping.is_set()


async def check_reachable(client: Redis, queue: QueueSettings) -> None:
    """Refuse to start when Redis does not answer a PING: BadInputError in one line
    naming ``queue.redis_url``, its password masked."""
    from redis.exceptions import RedisError

    try:
        async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        url = mask_url(queue.redis_url.get_secret_value())
        raise BadInputError(
            f"Redis does not answer at queue.redis_url={url} ({reason}); start it, or set "
            "queue.redis_url (IMAGINE_QUEUE__REDIS_URL) to one that runs"
        ) from exc


def _lock_data_dir(stack: contextlib.AsyncExitStack, settings: Settings) -> None:
    """Hold the data directory's lock until ``stack`` closes: alone with the memory
    queue, shared with the Redis queue (see :func:`open_backend`)."""
    shared = settings.queue.backend is QueueBackend.REDIS
    try:
        stack.enter_context(hold_data_dir(settings.data_dir, command=_command(), shared=shared))
    except DataDirInUseError as exc:
        raise BadInputError(exc.message) from exc


def _command() -> str:
    """How this process was started, for another one's refusal: the program and its
    sub-command (``imagine generate``); a prompt or any other argument stays out."""
    argv = sys.argv or [""]
    program = Path(argv[0]).name or "python"
    if program == "__main__.py":
        program = f"python -m {Path(argv[0]).parent.name}"
    command = next((arg for arg in argv[1:] if arg.isalpha()), None)
    return f"{program} {command}" if command else program


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


async def _start_local_workers(backend: Backend) -> None:
    """One worker per device of this machine (every CUDA device, else the CPU), each
    in ``backend.workers`` once started; :meth:`Backend.stop` closes them."""
    from backend.engine.hardware import pick_devices
    from backend.worker.ledger import make_ledger

    settings = backend.settings
    ledger = make_ledger(settings.queue, backend.db, backend.images)
    engine = settings.engine
    if engine.torch_threads is not None:
        import torch

        torch.set_num_threads(engine.torch_threads)
    for device in pick_devices(engine.device):
        worker = _device_worker(backend, ledger, device)
        log.info("worker_starting", device=str(device), worker_id=worker.config.worker_id)
        worker.start()
        backend.workers.append(worker)
    workers = list(backend.workers)
    if workers:
        backend.service.device_delay_s = lambda job: min(
            worker.start_delay_s(job) for worker in workers
        )
        backend.service.held_here = lambda job_id: any(job_id in w.held_job_ids for w in workers)


def _joins(cost: CostModel, min_gain: float, shape: Hashable, running_rows: int, rows: int) -> bool:
    """Whether ``rows`` rows below the realtime lane may join a running batch of
    ``shape`` (model, width, height) and ``running_rows`` rows: batching still saves
    ``min_gain`` of the device time by the service's measured step times."""
    model, width, height = cast(tuple[str, int, int], shape)
    return batching_pays(
        lambda n: cost.step_s(model, n, width, height), running_rows, rows, min_gain
    )


def _device_worker(backend: Backend, ledger: JobLedger, device: torch.device) -> DeviceWorker:
    import socket

    from backend.engine.factory import make_engine_factory
    from backend.engine.registry import ModelRegistry
    from backend.scheduling.preemption import Rules
    from backend.worker.worker import DeviceWorker, WorkerConfig

    settings, engine = backend.settings, backend.settings.engine
    config = WorkerConfig(
        worker_id=f"{socket.gethostname()}:{device}",
        device_name=str(device),
        lease_s=settings.queue.lease_s,
        capacity_rows=engine.max_batch_rows,
        variation_strength=engine.variation_strength,
        upscale_strength=engine.upscale_strength,
        max_source_pixels=engine.max_source_pixels,
        grid_min_tile_px=engine.grid_min_tile_px,
        grid_resample=engine.grid_resample,
        allow=backend.claim_filter,
        preemption=Rules.from_settings(settings.scheduler),
        pause_rows=settings.scheduler.preempt_pause_rows,
        on_step=backend.service.record_step,
        on_start=backend.service.job_started,
        joins=functools.partial(_joins, backend.service.cost, settings.scheduler.batch_min_gain),
    )
    registry = ModelRegistry(settings, backend.catalog, device)
    backend.registries.append(registry)
    return DeviceWorker(
        config,
        backend.queue,
        make_engine_factory(registry, engine, str(device)),
        backend.catalog,
        ledger,
        backend.events,
    )
