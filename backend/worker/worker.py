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

When things fail, no job stays running and no lease is held for nothing. A job whose
bookkeeping raises (a full disk under the image store) fails with the reason; a job
this process cannot set up (its row unknown to this database) goes back to the queue
a few times, for another process, and then fails. A renewal that fails for a reason
that may pass (Redis restarting) is retried while the lease lasts (:mod:`.leases`); a
lapsed lease takes the job off the device with its checkpoint recorded, and a lease
another claim holds stops this copy. The queue is told last, in the background, and a
call to it that did not answer is never taken as done: the ledger's records and the
lease's expiry settle what it left open. Every task is supervised and every wait of
:meth:`DeviceWorker.close` is bounded (:mod:`.tasks`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import structlog
from PIL import Image

from backend.catalog import ModelCatalog
from backend.clock import wall_ms
from backend.engine.types import EngineEvent, EngineFactory, Outcome, Request
from backend.errors import BackendError, LeaseLostError, QueueError
from backend.events.base import EventBus, EventKind, JobEvent
from backend.grid import encode_png, make_grid
from backend.models import Job, Lane
from backend.queue.base import EVERYTHING, ClaimFilter, JobQueue, Lease, LostBecause
from backend.scheduling.preemption import (
    Candidate,
    Rules,
    joins_when_it_fits,
    rank,
    steps_until_start,
)
from backend.tasks import final, settle, stop, supervise, wait_set
from backend.worker.flight import Flight, rows_of, shape_of, victims_for
from backend.worker.heartbeat import Heartbeat
from backend.worker.leases import LeaseTimer
from backend.worker.ledger.base import GRID_INDEX, Attempt, JobLedger, ResultImage
from backend.worker.release import QUEUE_CALL_S, Releases

log = structlog.get_logger(__name__)

# Step boundaries whose scheduling overhead is kept for the benchmark and metrics.
OVERHEAD_SAMPLES = 100_000
# The preemption check waits this long at most for the queue's head; after a failed
# check the next one waits this long too, so an unreachable queue is not asked per step.
PEEK_CALL_S = 1.0
# A ledger call of final bookkeeping (a result, a failure, a requeue) awaited this long
# at most; shielded, it goes on after that.
BOOKKEEPING_S = 30.0
# Claims that failed are retried after ``poll_s``, doubling, up to this.
CLAIM_BACKOFF_MAX_S = 1.0
# The shortest wait of a claim scoped to realtime work (before any step was timed).
MIN_SCOPED_WAIT_S = 0.05
# A job this worker cannot set up goes back to the queue this many times (for another
# process), then fails with its reason.
MAX_SETUP_RELEASES = 3
MAX_TRACKED_SETUPS = 10_000
# close() waits this long for the queue to take back what it was given, then this long
# for each task to stop, then this long for the device thread.
RELEASE_WAIT_S = 3.0
STOP_WAIT_S = 2.0
ENGINE_STOP_S = 5.0


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
    # The grid's tiles are scaled up to this many pixels on their shorter side.
    grid_min_tile_px: int = 0
    grid_resample: str = "lanczos"
    # What the device may start now (the degradation ladder's pauses).
    allow: Callable[[], ClaimFilter] = lambda: EVERYTHING
    # Throughput for start-time estimates: (solo device-seconds of work done in one
    # step, the step's seconds) at each boundary.
    on_step: Callable[[float, float], None] | None = None
    # A job took its first step, after waiting this many seconds since it was queued.
    on_start: Callable[[Job, float], None] | None = None
    # How long close() waits for evicted jobs' next step boundary.
    evict_wait_s: float = 10.0
    # Rows of preempted jobs kept paused in place on the device (0: always evict).
    pause_rows: int = 0
    # Whether a job of ``rows`` rows below the realtime lane may join a running batch of
    # (shape, rows): batching still pays (see ``batching_pays``). None: whenever it fits.
    joins: Callable[[Hashable, int, int], bool] | None = None


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
        self._flights: dict[str, Flight] = {}
        self._inbox: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping = asyncio.Event()  # no more claims
        self._closed = asyncio.Event()  # every task ends
        self._shut = asyncio.Event()  # close() is done
        self._tasks: list[asyncio.Task[None]] = []
        # Acks and requeues on their way to the queue (retried while it is away).
        self._releases = Releases(queue, config.lease_s)
        self._heartbeat = Heartbeat(
            queue,
            config.lease_s,
            self._flights,
            lost=self._lease_lost,
            lapsed=self._lease_lapsed,
            cancelled=self.cancel,
        )
        # How often each job this worker could not set up went back to the queue.
        self._setup_releases: dict[str, int] = {}
        self._claim_pause_s = 0.0
        self._peek_after_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine = engine_factory(self._from_device)
        self._started_seq = itertools.count(1)
        self._boundary_pending = False
        # Seconds spent deciding at each step boundary (queue peek, victims, evictions).
        self.overhead_s: deque[float] = deque(maxlen=OVERHEAD_SAMPLES)
        self.boundaries = 0
        self.preemptions = 0  # evictions for a more urgent job (checkpoint round trips)
        self.pauses = 0  # preemptions that paused a job in place
        self._last_boundary_s: float | None = None
        self.step_s = 0.0  # the last step's duration, as seen from here

    async def __aenter__(self) -> DeviceWorker:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the device thread and the claim, event and heartbeat tasks, each
        supervised (restarted after a crash, which is logged)."""
        self._loop = asyncio.get_running_loop()
        self._engine.start()
        name = self.config.worker_id
        loops = (
            ("claim", self._claim_loop, self._stopping),
            ("events", self._event_loop, self._closed),
            ("heartbeat", functools.partial(self._heartbeat.run, self._closed), self._closed),
        )
        self._tasks = [
            asyncio.create_task(supervise(task, body, done), name=f"{task}-{name}")
            for task, body, done in loops
        ]

    async def close(self, *, drain_s: float = 30.0) -> None:
        """Stop claiming; let running jobs finish for up to ``drain_s``, then evict the
        rest at their next step boundary (each checkpointed and requeued, through the
        ledger and the queue); stop the tasks and the device thread.

        Returns within ``drain_s`` plus a few seconds (``evict_wait_s`` at most for the
        step boundary), whatever the queue does: a job the queue could not take back
        stays in the ledger as queued with its checkpoint (running, if its boundary never
        came), and its lease lapses so that the queue hands it out again.
        """
        if self._stopping.is_set():
            await self._shut.wait()  # a close under way ends within its own bound
            return
        self._stopping.set()
        self._room.set()
        try:
            if drain_s <= 0:
                # No drain: off the device at the next step, not after the claim loop's
                # last poll, by which time a short job would have finished.
                self._evict_all()
            await self._stop_claiming()
            await self._wait_drained(drain_s)
            self._evict_all()
            await self._wait_drained(self.config.evict_wait_s)
            self._leave_the_rest()
            await self._releases.settle(RELEASE_WAIT_S)
        finally:
            self._closed.set()
            try:
                await stop([*self._tasks, *self._releases.tasks], STOP_WAIT_S)
                self._tasks = []
                await self._stop_engine()
            finally:
                self._shut.set()

    def _evict_all(self) -> None:
        """Ask for every held job to leave the device at its next step boundary."""
        for job_id, flight in list(self._flights.items()):
            if not flight.stopping:
                flight.stopping = True
                self._engine.evict(job_id)

    async def _stop_claiming(self) -> None:
        """Let the claim loop end by itself: its claim returns within ``poll_s`` (or the
        call's bound) and a lease it got meanwhile goes back. Cancelled after that."""
        if not self._tasks:
            return
        claim = self._tasks[0]
        if await settle([claim], self.config.poll_s + QUEUE_CALL_S):
            await stop([claim], STOP_WAIT_S)

    async def _wait_drained(self, timeout_s: float) -> None:
        if self._flights:
            self._drained.clear()
            await wait_set(self._drained, timeout_s)

    def _leave_the_rest(self) -> None:
        """Forget the jobs whose step boundary never came: they stay recorded as they
        are, and their leases lapse."""
        for job_id in self._flights:
            log.warning(
                "job_left_running",
                job_id=job_id,
                waited_s=self.config.evict_wait_s,
                why="no step boundary came; its lease lapses and the queue hands it out again",
            )
        self._flights.clear()
        self._drained.set()

    async def _stop_engine(self) -> None:
        if self._loop is None:
            return  # never started
        stopping = asyncio.ensure_future(asyncio.to_thread(self._engine.stop, ENGINE_STOP_S))
        if await settle([stopping], ENGINE_STOP_S + STOP_WAIT_S):
            log.error("device_thread_left_running", device=self.config.device_name)

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

    @property
    def held_job_ids(self) -> tuple[str, ...]:
        """The jobs the worker holds (running, or claimed and about to run)."""
        return tuple(self._flights)

    def evict(self, job_id: str) -> bool:
        """Take a job off the device at its next step boundary and requeue it."""
        flight = self._flights.get(job_id)
        if flight is None or flight.stopping:
            return False
        flight.stopping = True
        self._engine.evict(job_id)
        return True

    def pause(self, job_id: str) -> bool:
        """Set a running job aside at its next step boundary, its state kept on the
        device (and its lease held) until :meth:`resume`."""
        flight = self._flights.get(job_id)
        if flight is None or flight.stopping or not flight.running or flight.pausing:
            return False
        flight.pausing = True
        self._engine.pause(job_id)
        return True

    def resume(self, job_id: str) -> bool:
        """Let a paused job back on the device at the next step boundary."""
        flight = self._flights.get(job_id)
        if flight is None or flight.stopping or not flight.paused:
            return False
        flight.paused = False
        self._engine.resume(job_id)
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
        """Rows of the held jobs that take (or are about to take) device steps; paused
        ones wait aside and leave room for claims."""
        return sum(f.rows for f in self._flights.values() if not (f.paused or f.pausing))

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if self._flights and self._rows_in_flight() >= self.config.capacity_rows:
                self._room.clear()
                await wait_set(self._room, self.config.poll_s)
                continue
            if self._claim_pause_s > 0:
                pause_s, self._claim_pause_s = self._claim_pause_s, 0.0
                await wait_set(self._stopping, pause_s)
                continue
            sent_s = time.monotonic()
            try:
                lease = await self._claim()
            except (QueueError, TimeoutError) as exc:
                # A claim that timed out may have taken effect: that lease lapses unrenewed
                # and the queue hands the job out again.
                failures += 1
                log.warning("claim_failed", error=_why(exc), failures=failures)
                backoff_s = self.config.poll_s * 2 ** min(failures - 1, 8)
                await wait_set(self._stopping, min(backoff_s, CLAIM_BACKOFF_MAX_S))
                continue
            if failures:
                log.info("claim_recovered", failures=failures)
                failures = 0
            if lease is not None:
                await self._take(lease, sent_s)

    async def _claim(self) -> Lease | None:
        config = self.config
        allow, wait_s = await self._claim_scope()
        async with asyncio.timeout(wait_s + QUEUE_CALL_S):
            return await self._queue.claim(
                config.worker_id, lease_s=config.lease_s, wait_s=wait_s, allow=allow
            )

    async def _claim_scope(self) -> tuple[ClaimFilter, float]:
        """What to claim, and how long to wait for it: what the degradation ladder
        allows; but while the running batch would gain too little by growing, only
        realtime work (unless the queue's head is aged), waiting no longer than the
        batch's nearest finish. Other work then stays queued for a device that can
        start it at once, or for this one once its batch ends."""
        config = self.config
        allow = config.allow()
        running = self._batch()
        if config.joins is None or not running:
            return allow, config.poll_s
        rows = sum(f.rows for f in running)
        if config.joins(running[0].shape, rows, min(f.rows for f in running)):
            return allow, config.poll_s
        async with asyncio.timeout(PEEK_CALL_S):
            head = await self._queue.peek(allow)
        if head is not None and joins_when_it_fits(rank(head.job.lane, head.aged)):
            return allow, config.poll_s
        steps_left = min(max(1, (f.lease.job.spec.steps or 1) - f.done_steps) for f in running)
        wait_s = min(config.poll_s, max(steps_left * self.step_s, MIN_SCOPED_WAIT_S))
        return ClaimFilter(allow.exclude_tiers, allow.lanes & {Lane.REALTIME}), wait_s

    async def _take(self, lease: Lease, sent_s: float) -> None:
        """Set up a claimed job; never raises: a job that cannot be set up goes back to
        the queue (a bounded number of times) or fails with its reason."""
        if self._stopping.is_set():
            # Claimed while closing: back to the queue as it came.
            self._releases.requeue(lease, lease.checkpoint)
            return
        if not self.config.allow().allows(lease.job.lane, lease.job.tier):
            # Its lane or tier was paused while the claim waited (the claim's filter is
            # the one it started with): back to the queue as it came.
            log.info("claim_returned_paused", job_id=lease.job.id, lane=lease.job.lane.value)
            self._releases.requeue(lease, lease.checkpoint)
            return
        try:
            await self._begin(lease, sent_s)
        except Exception as exc:
            log.exception("job_setup_failed", job_id=lease.job.id, attempt=lease.attempt)
            await self._setup_failed(lease, exc)

    async def _begin(self, lease: Lease, sent_s: float) -> None:
        job = lease.job
        attempt = Attempt.of(lease)
        if not await self._ledger.claimed(attempt):
            # Finished already (its result recorded after its lease lapsed, the ack lost)
            # or run by a later attempt: never run again. The queue forgets it.
            log.warning("job_claim_dropped", job_id=job.id, attempt=lease.attempt)
            self._releases.ack(lease)
            return
        try:
            request = await self._request_for(job)
        except (BackendError, ValueError, OSError) as exc:
            await self._fail(attempt, str(exc))
            self._releases.ack(lease)
            return
        checkpoint = lease.checkpoint
        if checkpoint is None:
            # The queue lost it (Redis flushed, the job reconciled from SQLite, a requeue
            # that never reached it): the ledger keeps the last checkpoint of a requeue.
            checkpoint = await self._ledger.checkpoint(job.id)
        timer = LeaseTimer.start(sent_s, self.config.lease_s)
        self._flights[job.id] = Flight(lease, rows_of(job), shape_of(request.spec), timer)
        self._setup_releases.pop(job.id, None)
        log.info("job_claimed", job_id=job.id, attempt=lease.attempt, resumed=bool(checkpoint))
        self._engine.submit(request, checkpoint)

    async def _setup_failed(self, lease: Lease, exc: Exception) -> None:
        """Give the job back to the queue, so that another process (whose database knows
        it, whose disk has room) may run it, and pause claiming a little; after
        :data:`MAX_SETUP_RELEASES` times, fail it with the reason."""
        job_id = lease.job.id
        self._landed(job_id)
        reason = f"set-up failed on {self.config.worker_id}: {_why(exc)}"
        releases = self._setup_releases.pop(job_id, 0) + 1
        if releases > MAX_SETUP_RELEASES:
            attempt = Attempt.of(lease)
            # Recording the claim again changes nothing if it was recorded, and lets the
            # failure count as this attempt's if it was not.
            await self._record(self._ledger.claimed(attempt), job_id, "claimed")
            await self._fail(attempt, reason)
            self._releases.ack(lease)
            return
        if len(self._setup_releases) >= MAX_TRACKED_SETUPS:
            self._setup_releases.clear()
        self._setup_releases[job_id] = releases
        await self._record(
            self._ledger.requeued(Attempt.of(lease), lease.checkpoint), job_id, "requeued"
        )
        self._releases.requeue(lease, lease.checkpoint)
        self._claim_pause_s = self.config.poll_s * releases
        log.warning("job_released", job_id=job_id, releases=releases, reason=reason)

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
        while not self._closed.is_set():
            event = await self._inbox.get()
            flight = self._flights.get(event.job_id)
            if flight is not None:
                try:
                    await self._handle(event, flight)
                except Exception:  # bookkeeping for one job must not stop the others'
                    log.exception(
                        "engine_event_failed", job_id=event.job_id, outcome=event.outcome.value
                    )
            # One step's events arrive together: decide once they are all in.
            if self._boundary_pending and self._inbox.empty():
                await self._at_boundary()

    async def _handle(self, event: EngineEvent, flight: Flight) -> None:
        if event.outcome is Outcome.PROGRESS:
            await self._progress(event, flight)
        elif event.outcome is Outcome.STARTED:
            self._started(event, flight)
            if flight.counted_out:
                await self._report_pause(flight, paused=False)
        elif event.outcome is Outcome.PAUSED:
            self._paused(event, flight)
            await self._report_pause(flight, paused=True)
        else:
            # The device may have room now, or nothing left running: decide again.
            self._boundary_pending = True
            await self._finish(event, flight)

    async def _report_pause(self, flight: Flight, *, paused: bool) -> None:
        """Tell the queue that a held job was paused in place (it stops counting against
        its user's running cap) or runs again. Best effort: should the queue not hear
        it, the cap keeps counting the job, which only delays that user's next job."""
        try:
            async with asyncio.timeout(QUEUE_CALL_S):
                await self._queue.set_paused(flight.lease, paused)
        except (QueueError, TimeoutError) as exc:
            log.warning("pause_unreported", job_id=flight.lease.job.id, error=_why(exc))
            return
        flight.counted_out = paused

    def _paused(self, event: EngineEvent, flight: Flight) -> None:
        flight.running = False
        flight.pausing = False
        flight.paused = True
        self._boundary_pending = True
        self._room.set()
        self._publish(event.job_id, EventKind.PREEMPTED, event.step, event.total)
        log.info("job_paused", job_id=event.job_id, step=event.step)

    async def _progress(self, event: EngineEvent, flight: Flight) -> None:
        job_id = event.job_id
        flight.steps_since_resume += 1
        flight.done_steps = event.step
        self._boundary_pending = True
        self._publish(
            job_id, EventKind.STEP, event.step, event.total, event.eta_s, preview=event.preview
        )
        try:
            await self._ledger.progress(flight.attempt, event.step, event.total)
        except Exception as exc:
            # The step went out to followers; a requeue records the step reached anyway.
            log.warning("progress_unrecorded", job_id=job_id, error=_why(exc))

    def _started(self, event: EngineEvent, flight: Flight) -> None:
        job = flight.lease.job
        flight.running = True
        flight.paused = False
        flight.steps_since_resume = 0
        flight.done_steps = event.step
        flight.started_seq = next(self._started_seq)
        if flight.lease.attempt == 1 and self.config.on_start is not None:
            waited_s = max(0.0, (wall_ms() - job.submitted_at_ms) / 1000)
            self.config.on_start(job, waited_s)
        self._publish(job.id, EventKind.STARTED, event.step, event.total)

    async def _finish(self, event: EngineEvent, flight: Flight) -> None:
        """A job's last event from the device: record it, tell its followers, let the
        queue forget it (or take it back). Whatever fails, the job leaves this worker
        and ends: bookkeeping that raises fails the job with the reason."""
        job = flight.lease.job
        try:
            with structlog.contextvars.bound_contextvars(
                job_id=job.id,
                user_id=job.user_id,
                lane=job.lane.value,
                device=self.config.device_name,
            ):
                await self._end(event, flight)
        finally:
            # Only now, so that close() sees the job's records made and its release
            # under way once the worker holds nothing. (A lost lease landed it already.)
            if self._flights.get(job.id) is flight:
                self._landed(job.id)

    async def _end(self, event: EngineEvent, flight: Flight) -> None:
        if event.outcome is Outcome.EVICTED:
            await self._requeue(flight, event)
            return
        try:
            await self._record_end(event, flight)
        except Exception as exc:
            job_id = flight.lease.job.id
            log.exception("job_bookkeeping_failed", job_id=job_id, outcome=event.outcome.value)
            await self._fail(flight.attempt, _bookkeeping_failed(event, exc))
        # Not reached when cancelled: a record cut short may not have been made, so the
        # lease is left to lapse and the queue hands the job out again.
        self._releases.ack(flight.lease)

    async def _record_end(self, event: EngineEvent, flight: Flight) -> None:
        job = flight.lease.job
        if event.outcome is Outcome.FINISHED:
            await self._succeed(job, list(event.images), flight)
        elif event.outcome is Outcome.FAILED:
            await self._fail(flight.attempt, event.error or "failed")
        else:
            await final(self._ledger.cancelled(flight.attempt), BOOKKEEPING_S)
            self._publish(job.id, EventKind.CANCELLED)
            log.info("job_cancelled")

    # -- preemption ------------------------------------------------------------------------

    async def _at_boundary(self) -> None:
        """Once per step boundary: let a more urgent job take the device, if the
        preemption rules allow; the time it takes is the scheduler's overhead."""
        self._boundary_pending = False
        self.boundaries += 1
        self._measure_step()
        if self._stopping.is_set() or not self.config.preemption.enabled:
            self._resume_if_idle()
            return
        started = time.perf_counter()
        if time.monotonic() < self._peek_after_s:
            return  # the queue failed a moment ago
        try:
            await self._preempt_for_urgent()
        except (QueueError, TimeoutError) as exc:
            self._peek_after_s = time.monotonic() + PEEK_CALL_S
            log.warning("preemption_check_failed", error=_why(exc))
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
        running = self._batch()
        if not running:
            return 0.0
        wanted = Candidate(
            job.id,
            rank(job.lane, aged),
            rows_of(job),
            shape_of(self._catalog.resolve(job.spec)),
            job.cost_s,
        )
        steps = steps_until_start(
            wanted,
            [f.as_running() for f in running],
            self.config.capacity_rows,
            self.config.preemption,
            self.config.pause_rows,
            joins=self._may_join(wanted, running),
        )
        return steps * self.step_s

    def _resume_if_idle(self) -> bool:
        """Resume the most urgent paused job when nothing runs and no claimed job waits
        to run (the device would idle otherwise); True if one was."""
        flights = self._flights.values()
        if any(f.running or f.pausing or (f.waiting and not f.paused) for f in flights):
            return False
        paused = [f for f in flights if f.paused and not f.stopping]
        if not paused:
            return False
        first = min(paused, key=lambda f: (f.rank, f.remaining_s, f.started_seq))
        return self.resume(first.lease.job.id)

    async def _preempt_for_urgent(self) -> None:
        if self._resume_if_idle():
            return
        if not self._batch():
            return
        async with asyncio.timeout(PEEK_CALL_S):
            head = await self._queue.peek(self.config.allow())
        config = self.config
        waiting, plan = victims_for(
            self._flights,
            head,
            self._catalog.resolve,
            config.capacity_rows,
            config.preemption,
            config.pause_rows,
        )
        for job_id in plan.pause:
            if self.pause(job_id):
                self.pauses += 1
                log.info("job_pausing", job_id=job_id, for_job=waiting and waiting.job_id)
        for job_id in plan.evict:
            if self.evict(job_id):
                self.preemptions += 1
                log.info("job_preempting", job_id=job_id, for_job=waiting and waiting.job_id)
        if waiting is not None and (plan or self._fits(waiting)):
            held = self._flights.get(waiting.job_id)
            if held is not None and held.paused:
                self.resume(waiting.job_id)

    def _fits(self, waiting: Candidate) -> bool:
        """Whether ``waiting`` could join the running batch at the next boundary: it
        has the batch's shape, there is room, and for work below the realtime lane,
        batching still pays."""
        running = self._batch()
        if any(f.shape != waiting.shape for f in running):
            return False
        if sum(f.rows for f in running) + waiting.rows > self.config.capacity_rows:
            return False
        return self._may_join(waiting, running)

    def _batch(self) -> list[Flight]:
        """The held jobs taking steps in the engine's running batch."""
        return [f for f in self._flights.values() if f.running and not f.stopping]

    def _may_join(self, waiting: Candidate, running: list[Flight]) -> bool:
        """Whether ``waiting`` may join the running batch by the batching rule:
        realtime and aged work always, other work while batching still pays."""
        joins = self.config.joins
        if not running or joins is None or joins_when_it_fits(waiting.rank):
            return True
        return joins(waiting.shape, sum(f.rows for f in running), waiting.rows)

    async def _succeed(self, job: Job, samples: list[Image.Image], flight: Flight) -> None:
        config = self.config
        images = await asyncio.to_thread(
            _encode, samples, config.grid_min_tile_px, config.grid_resample
        )
        run_s = time.monotonic() - flight.started_s
        paths = await final(
            self._ledger.succeeded(job, flight.attempt, images, run_s), BOOKKEEPING_S
        )
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
        """Record the job failed with ``reason`` and tell its followers. Never raises: a
        ledger that cannot record it is logged, and the failure is published all the
        same, so that nobody waits for the job forever."""
        await self._record(self._ledger.failed(attempt, reason), attempt.job_id, "failed")
        self._publish(attempt.job_id, EventKind.FAILED, error=reason)
        log.warning("job_failed", job_id=attempt.job_id, error=reason)

    async def _requeue(self, flight: Flight, event: EngineEvent) -> None:
        job = flight.lease.job
        # The ledger first: should the queue not take the job back (unreachable), its
        # lease lapses, the queue hands the job out again, and it resumes from here.
        await self._record(
            self._ledger.requeued(flight.attempt, event.checkpoint), job.id, "requeued"
        )
        self._releases.requeue(flight.lease, event.checkpoint)
        self._publish(job.id, EventKind.PREEMPTED, event.step, event.total)
        size = len(event.checkpoint) if event.checkpoint else 0
        log.info(
            "job_preempted",
            job_id=job.id,
            step=event.step,
            checkpoint_bytes=size,
            lease_lapsed=flight.lapsed,
        )

    async def _record(self, work: Awaitable[object], job_id: str, entry: str) -> bool:
        """Final bookkeeping through the ledger, shielded and bounded; False (logged)
        if it failed."""
        try:
            await final(work, BOOKKEEPING_S)
        except Exception as exc:
            log.error("ledger_record_failed", job_id=job_id, entry=entry, error=_why(exc))
            return False
        return True

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

    def _lease_lost(self, job_id: str, exc: Exception) -> None:
        if isinstance(exc, LeaseLostError) and exc.reason == LostBecause.UNKNOWN:
            # The queue forgot the job (Redis restarted empty, or was flushed): nobody
            # else can hold it. Off the device with its checkpoint, which the ledger
            # records and the release queues again.
            self._lease_lapsed(job_id, exc)
            return
        # Another claim holds the job now: stop our copy without touching its records.
        log.warning("lease_lost", job_id=job_id, error=_why(exc))
        self._landed(job_id)
        self._engine.cancel(job_id)

    def _lease_lapsed(self, job_id: str, exc: Exception) -> None:
        # The queue may hand the job to another worker now. Off the device it goes, its
        # checkpoint recorded by the ledger to resume from.
        flight = self._flights[job_id]
        log.warning("lease_lapsed", job_id=job_id, error=_why(exc), failures=flight.timer.failures)
        flight.lapsed = True
        flight.stopping = True
        self._engine.evict(job_id)


def _encode(samples: list[Image.Image], min_tile_px: int, resample: str) -> list[ResultImage]:
    """The grid (tiles scaled up to ``min_tile_px``), then each sample at its own size,
    as PNG; blocking, so run it in a thread."""
    ordered = [(GRID_INDEX, make_grid(samples, min_tile_px, resample)), *enumerate(samples)]
    return [
        ResultImage(index, encode_png(image), image.width, image.height) for index, image in ordered
    ]


def _why(exc: BaseException) -> str:
    """An error for a log line or a job's recorded reason."""
    return str(exc) or type(exc).__name__


def _bookkeeping_failed(event: EngineEvent, exc: Exception) -> str:
    """The reason a job fails with when recording its end raised."""
    what = {
        Outcome.FINISHED: "storing the result",
        Outcome.FAILED: "recording the failure",
        Outcome.CANCELLED: "recording the cancellation",
    }.get(event.outcome, "bookkeeping")
    reason = f"{what} failed: {_why(exc)}"
    if event.outcome is Outcome.FAILED and event.error:
        return f"{event.error} ({reason})"
    return reason
