"""A device worker: claims jobs from the queue, feeds them to its device's engine, and
records what the engine reports (claims, progress, images, failures, preemptions)
through its :class:`~backend.worker.ledger.base.JobLedger`, never storage itself.

The engine batches jobs at step level, so a worker holds several leases at once: it
claims while the device has room, renews every lease it holds, and on shutdown
evicts unfinished jobs back to the queue with their checkpoints.

At each step boundary the worker looks at the most urgent job that wants the device
(the queue's head, or a job it claimed that waits for the running shape) and, by the
rules of :mod:`backend.scheduling.preemption`, evicts less urgent running jobs so that one can
start at the next boundary; evicted jobs go back to the queue with their checkpoints
and resume ahead of their lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from PIL import Image

from backend.catalog import ModelCatalog
from backend.clock import wall_ms
from backend.engine.types import EngineEvent, EngineFactory, Outcome, Request
from backend.errors import BackendError, QueueError
from backend.events.base import EventBus, EventKind, JobEvent
from backend.grid import encode_png, make_grid
from backend.models import Job, JobSpec
from backend.queue.base import EVERYTHING, ClaimFilter, Head, JobQueue, Lease
from backend.scheduling.lanes import rows_for
from backend.scheduling.preemption import (
    Candidate,
    Rules,
    Running,
    rank,
    steps_until_start,
    victims,
)
from backend.worker.ledger.base import GRID_INDEX, Attempt, JobLedger, ResultImage

log = structlog.get_logger(__name__)

# Step boundaries whose scheduling overhead is kept for the benchmark and metrics.
OVERHEAD_SAMPLES = 100_000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """How one device worker claims, batches and preempts."""

    worker_id: str
    # When a more urgent job may take the device from running ones (no default: the
    # scheduler settings are its one source, see ``Rules.from_settings``).
    preemption: Rules
    device_name: str = "cpu"
    lease_s: float = 60.0
    poll_s: float = 1.0
    # Rows (two per guided sample) claimed ahead; the engine's batch limit is a fair choice.
    capacity_rows: int = 16
    variation_strength: float = 0.6
    upscale_strength: float = 0.3
    max_source_pixels: int = 4096 * 4096
    # What the device may start now (the degradation ladder's pauses).
    allow: Callable[[], ClaimFilter] = lambda: EVERYTHING
    # Throughput for start-time estimates: (solo device-seconds of work done in one
    # step, the step's seconds) at each boundary.
    on_step: Callable[[float, float], None] | None = None
    # A job took its first step, after waiting this many seconds since it was queued.
    on_start: Callable[[Job, float], None] | None = None


@dataclass(slots=True)
class _Flight:
    lease: Lease
    rows: int
    shape: Hashable  # (model, width, height): jobs batch only with their own shape
    started_s: float = field(default_factory=time.monotonic)
    stopping: bool = False  # evicted or cancelled by us; its final event is pending
    running: bool = False  # in the engine's running batch (not waiting for its shape)
    steps_since_resume: int = 0
    started_seq: int = 0
    done_steps: int = 0

    @property
    def rank(self) -> int:
        return rank(self.lease.job.lane, aged=False)

    @property
    def attempt(self) -> Attempt:
        return Attempt.of(self.lease)

    def as_running(self) -> Running:
        # Every claim after the first follows a preemption (or a lost lease).
        preemptions = self.lease.attempt - 1
        return Running(
            self.lease.job.id,
            self.rank,
            self.rows,
            self.shape,
            self.steps_since_resume,
            preemptions,
            self.started_seq,
            max(0, (self.lease.job.spec.steps or 0) - self.done_steps),
        )


class DeviceWorker:
    """Owns one device engine and the tasks that feed it. An async context manager."""

    def __init__(
        self,
        config: WorkerConfig,
        queue: JobQueue,
        engine_factory: EngineFactory,
        catalog: ModelCatalog,
        ledger: JobLedger,
        events: EventBus,
    ) -> None:
        self.config = config
        self._queue = queue
        self._catalog = catalog
        self._ledger = ledger
        self._events = events
        self._flights: dict[str, _Flight] = {}
        self._inbox: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine = engine_factory(self._from_device)
        self._started_seq = itertools.count(1)
        self._boundary_pending = False
        # Seconds spent deciding at each step boundary (queue peek, victims, evictions).
        self.overhead_s: deque[float] = deque(maxlen=OVERHEAD_SAMPLES)
        self.boundaries = 0
        self.preemptions = 0
        self._last_boundary_s: float | None = None
        self.step_s = 0.0  # the last step's duration, as seen from here

    async def __aenter__(self) -> DeviceWorker:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the device thread and the claim, event and heartbeat tasks."""
        self._loop = asyncio.get_running_loop()
        self._engine.start()
        name = self.config.worker_id
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"claim-{name}"),
            asyncio.create_task(self._event_loop(), name=f"events-{name}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat-{name}"),
        ]

    async def close(self, *, drain_s: float = 30.0) -> None:
        """Stop claiming; let running jobs finish for up to ``drain_s``, then evict the
        rest back to the queue with their checkpoints; stop the device thread."""
        self._stopping.set()
        self._room.set()
        # Claiming stops first, so nothing requeued below is claimed straight back.
        others = self._tasks[1:]
        if self._tasks:
            self._tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks[0]
        await self._wait_drained(drain_s)
        for job_id, flight in list(self._flights.items()):
            flight.stopping = True
            self._engine.evict(job_id)
        await self._wait_drained(10.0)
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await asyncio.to_thread(self._engine.stop)

    async def _wait_drained(self, timeout_s: float) -> None:
        if not self._flights:
            return
        self._drained.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout_s)

    def _landed(self, job_id: str) -> None:
        """A job left this worker (finished, failed, requeued or lost)."""
        self._flights.pop(job_id, None)
        self._room.set()
        if not self._flights:
            self._drained.set()

    # -- what the scheduler and the service may ask --------------------------------------

    @property
    def busy(self) -> bool:
        """Whether the worker holds any job (running, or claimed and about to run)."""
        return bool(self._flights)

    def evict(self, job_id: str) -> bool:
        """Take a job off the device at its next step boundary and requeue it."""
        flight = self._flights.get(job_id)
        if flight is None or flight.stopping:
            return False
        flight.stopping = True
        self._engine.evict(job_id)
        return True

    def cancel(self, job_id: str) -> bool:
        """Stop a job at its next step boundary; False if this worker does not hold it."""
        flight = self._flights.get(job_id)
        if flight is None:
            return False
        flight.stopping = True
        self._engine.cancel(job_id)
        return True

    # -- claiming ------------------------------------------------------------------------

    def _rows_in_flight(self) -> int:
        return sum(flight.rows for flight in self._flights.values())

    async def _claim_loop(self) -> None:
        config = self.config
        while not self._stopping.is_set():
            if self._flights and self._rows_in_flight() >= config.capacity_rows:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), config.poll_s)
                continue
            try:
                lease = await self._queue.claim(
                    config.worker_id,
                    lease_s=config.lease_s,
                    wait_s=config.poll_s,
                    allow=config.allow(),
                )
            except QueueError as exc:
                log.warning("claim_failed", error=str(exc))
                await asyncio.sleep(config.poll_s)
                continue
            if lease is None:
                continue
            try:
                await self._begin(lease)
            except Exception as exc:  # one job's set-up failing must not stop claiming
                log.exception("job_setup_failed", job_id=lease.job.id)
                # Recording the claim again changes nothing if it was recorded, and lets
                # the failure count as this attempt's if it was not.
                await self._ledger.claimed(Attempt.of(lease))
                await self._fail(Attempt.of(lease), f"set-up failed: {exc}")
                await self._ack(lease)

    async def _begin(self, lease: Lease) -> None:
        job = lease.job
        attempt = Attempt.of(lease)
        await self._ledger.claimed(attempt)
        try:
            request = await self._request_for(job)
        except (BackendError, ValueError, OSError) as exc:
            await self._fail(attempt, str(exc))
            await self._ack(lease)
            return
        checkpoint = lease.checkpoint
        if checkpoint is None:
            # The queue lost it (Redis flushed, the job reconciled from SQLite): the
            # ledger keeps the last checkpoint of a preempted job.
            checkpoint = await self._ledger.checkpoint(job.id)
        self._flights[job.id] = _Flight(lease, _rows(job), _shape(request.spec))
        log.info("job_claimed", job_id=job.id, attempt=lease.attempt, resumed=bool(checkpoint))
        self._engine.submit(request, checkpoint)

    async def _request_for(self, job: Job) -> Request:
        spec = self._catalog.resolve(job.spec)
        source = job.meta.get("source_image")
        if source is None:
            return Request(job.id, spec)
        from backend.engine.source import load_source_image

        data = await asyncio.to_thread(Path(str(source)).read_bytes)
        image = await asyncio.to_thread(load_source_image, data, self.config.max_source_pixels)
        strength = float(job.meta.get("strength", self.config.variation_strength))
        return Request(job.id, spec, init_image=image, strength=strength)

    # -- engine events ---------------------------------------------------------------------

    def _from_device(self, event: EngineEvent) -> None:
        """Called on the device thread: hand the event to the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, event)

    async def _event_loop(self) -> None:
        while True:
            event = await self._inbox.get()
            flight = self._flights.get(event.job_id)
            if flight is not None:
                try:
                    await self._handle(event, flight)
                except Exception:  # bookkeeping for one job must not stop the others'
                    log.exception("engine_event_failed", job_id=event.job_id, outcome=event.outcome)
            # One step's events arrive together: decide once they are all in.
            if self._boundary_pending and self._inbox.empty():
                await self._at_boundary()

    async def _handle(self, event: EngineEvent, flight: _Flight) -> None:
        job = flight.lease.job
        outcome = event.outcome
        if outcome is Outcome.PROGRESS:
            flight.steps_since_resume += 1
            flight.done_steps = event.step
            self._boundary_pending = True
            self._publish(
                job.id, EventKind.STEP, event.step, event.total, event.eta_s, preview=event.preview
            )
            await self._ledger.progress(flight.attempt, event.step, event.total)
            return
        if outcome is Outcome.STARTED:
            flight.running = True
            flight.steps_since_resume = 0
            flight.done_steps = event.step
            flight.started_seq = next(self._started_seq)
            if flight.lease.attempt == 1 and self.config.on_start is not None:
                waited_s = max(0.0, (wall_ms() - job.submitted_at_ms) / 1000)
                self.config.on_start(job, waited_s)
            self._publish(job.id, EventKind.STARTED, event.step, event.total)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=job.id, user_id=job.user_id, lane=job.lane.value, device=self.config.device_name
        ):
            if outcome is Outcome.FINISHED:
                await self._succeed(job, list(event.images), flight)
            elif outcome is Outcome.FAILED:
                await self._fail(flight.attempt, event.error or "failed")
            elif outcome is Outcome.CANCELLED:
                await asyncio.shield(self._ledger.cancelled(flight.attempt))
                self._publish(job.id, EventKind.CANCELLED)
                log.info("job_cancelled")
            elif outcome is Outcome.EVICTED:
                await self._requeue(flight, event)
                return
            await self._ack(flight.lease)

    # -- preemption ------------------------------------------------------------------------

    async def _at_boundary(self) -> None:
        """Once per step boundary: let a more urgent job take the device, if the
        preemption rules allow; the time it takes is the scheduler's overhead."""
        self._boundary_pending = False
        self.boundaries += 1
        self._measure_step()
        if not self.config.preemption.enabled or self._stopping.is_set():
            return
        started = time.perf_counter()
        try:
            await self._preempt_for_urgent()
        except QueueError as exc:
            log.warning("preemption_check_failed", error=str(exc))
        finally:
            self.overhead_s.append(time.perf_counter() - started)

    def _measure_step(self) -> None:
        now_s = time.monotonic()
        last, self._last_boundary_s = self._last_boundary_s, now_s
        running = [f for f in self._flights.values() if f.running]
        if last is None or not running:
            return
        self.step_s = now_s - last
        if self.config.on_step is not None:
            job = [f.lease.job for f in running]
            work = sum(j.cost_s / max(j.spec.steps or 1, 1) for j in job)
            self.config.on_step(work, self.step_s)

    def start_delay_s(self, job: Job, *, aged: bool = False) -> float:
        """Seconds until this device could take ``job`` at a step boundary, by the
        preemption rules, if nothing else arrives (0 when it is idle)."""
        running = [f for f in self._flights.values() if f.running and not f.stopping]
        if not running:
            return 0.0
        wanted = Candidate(
            job.id, rank(job.lane, aged), _rows(job), _shape(self._catalog.resolve(job.spec))
        )
        steps = steps_until_start(
            wanted,
            [f.as_running() for f in running],
            self.config.capacity_rows,
            self.config.preemption,
        )
        return steps * self.step_s

    async def _preempt_for_urgent(self) -> None:
        running = [f for f in self._flights.values() if f.running and not f.stopping]
        if not running:
            return
        head = await self._queue.peek(self.config.allow())
        waiting = self._most_urgent(head)
        if waiting is None:
            return
        config = self.config
        chosen = victims(
            waiting, [f.as_running() for f in running], config.capacity_rows, config.preemption
        )
        if head is not None and waiting.job_id == head.job.id and chosen:
            # Claimed jobs that wait for their shape would take the freed device
            # before the queued job is claimed: less urgent ones go back too.
            chosen += [
                job_id
                for job_id, f in self._flights.items()
                if not f.running and not f.stopping and f.rank > waiting.rank
            ]
        for job_id in chosen:
            if self.evict(job_id):
                self.preemptions += 1
                log.info("job_preempting", job_id=job_id, for_job=waiting.job_id)

    def _most_urgent(self, head: Head | None) -> Candidate | None:
        """The most urgent job that wants the device: a claimed one waiting for its
        shape, or the queue's head (a tie goes to the one already claimed)."""
        best: Candidate | None = None
        for job_id, flight in self._flights.items():
            if flight.running or flight.stopping:
                continue
            if best is None or flight.rank < best.rank:
                best = Candidate(job_id, flight.rank, flight.rows, flight.shape)
        if head is not None and head.job.id not in self._flights:
            job = head.job
            urgency = rank(job.lane, head.aged)
            if best is None or urgency < best.rank:
                shape = _shape(self._catalog.resolve(job.spec))
                best = Candidate(job.id, urgency, _rows(job), shape)
        return best

    async def _succeed(self, job: Job, samples: list[Image.Image], flight: _Flight) -> None:
        images = await asyncio.to_thread(_encode, samples)
        run_s = time.monotonic() - flight.started_s
        paths = await asyncio.shield(self._ledger.succeeded(job, flight.attempt, images, run_s))
        if not paths:
            # A later attempt holds the job (this lease was lost): its result stands.
            log.warning("job_result_discarded", attempt=flight.lease.attempt)
            return
        self._publish(job.id, EventKind.SUCCEEDED, images=paths)
        spec = job.spec
        log.info(
            "job_finished",
            state="succeeded",
            model=spec.model or self._catalog.default,
            n=spec.n,
            width=spec.width,
            height=spec.height,
            run_s=round(run_s, 3),
            grid=paths[0],
        )

    async def _fail(self, attempt: Attempt, reason: str) -> None:
        await asyncio.shield(self._ledger.failed(attempt, reason))
        self._publish(attempt.job_id, EventKind.FAILED, error=reason)
        log.warning("job_failed", job_id=attempt.job_id, error=reason)

    async def _requeue(self, flight: _Flight, event: EngineEvent) -> None:
        job = flight.lease.job
        self._landed(job.id)
        try:
            await self._queue.requeue(flight.lease, checkpoint=event.checkpoint)
        except QueueError as exc:
            log.warning("requeue_failed", job_id=job.id, error=str(exc))
            return
        await asyncio.shield(self._ledger.requeued(flight.attempt, event.checkpoint))
        self._publish(job.id, EventKind.PREEMPTED, event.step, event.total)
        size = len(event.checkpoint) if event.checkpoint else 0
        log.info("job_preempted", job_id=job.id, step=event.step, checkpoint_bytes=size)

    async def _ack(self, lease: Lease) -> None:
        self._landed(lease.job.id)
        with contextlib.suppress(QueueError):
            await self._queue.ack(lease)

    def _publish(
        self,
        job_id: str,
        kind: EventKind,
        step: int = 0,
        total: int = 0,
        eta_s: float | None = None,
        *,
        images: tuple[str, ...] = (),
        error: str | None = None,
        preview: bytes | None = None,
    ) -> None:
        event = JobEvent(
            job_id, kind, step, total, eta_s, images, error, at_ms=wall_ms(), preview=preview
        )
        self._events.publish(event)

    # -- leases ----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = max(self.config.lease_s / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            for job_id, flight in list(self._flights.items()):
                await self._keep(job_id, flight)

    async def _keep(self, job_id: str, flight: _Flight) -> None:
        try:
            flight.lease = await self._queue.renew(flight.lease, lease_s=self.config.lease_s)
            cancelled = await self._queue.is_cancelled(job_id)
        except QueueError as exc:
            # Someone else holds the job now: stop our copy without touching its records.
            log.warning("lease_lost", job_id=job_id, error=str(exc))
            self._landed(job_id)
            self._engine.cancel(job_id)
            return
        if cancelled and not flight.stopping:
            self.cancel(job_id)


def _encode(samples: list[Image.Image]) -> list[ResultImage]:
    """The grid, then each sample, as PNG; blocking, so run it in a thread."""
    ordered = [(GRID_INDEX, make_grid(samples)), *enumerate(samples)]
    return [
        ResultImage(index, encode_png(image), image.width, image.height) for index, image in ordered
    ]


def _rows(job: Job) -> int:
    return rows_for(job.spec.n, job.spec.guidance)


def _shape(spec: JobSpec) -> Hashable:
    """What jobs must share to batch: the model and the image size."""
    return (spec.model, spec.width, spec.height)
