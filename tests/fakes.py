"""Hand-written fakes for our own Protocols, in one place: a clock, a step-timed engine,
a ledger and a queue that fail when a test says so.

Only our own contracts get fakes (house style); Redis, SQLite, diffusers and discord.py
are always the real thing.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from backend.engine.types import EngineEvent, EventSink, Outcome, Request
from backend.errors import QueueUnavailableError
from backend.models import Job, Lane
from backend.queue.base import EVERYTHING, ClaimFilter, Head, JobQueue, Lease
from backend.worker.ledger.base import Attempt, JobLedger, ResultImage

STEP_S = 0.01
"""Seconds one denoising step of :class:`StepTimedEngine` takes by default."""


class FakeClock:
    """One instant that moves only when the test says so, read in the unit a caller needs.

    Pass the bound reader the code under test expects: ``clock.ms`` where it takes
    ``now_ms`` (wall milliseconds, an ``int``), ``clock.monotonic`` where it takes
    monotonic seconds. Both read the same instant, so a test that moves one moves both.
    The start defaults to 1 000 000 ms; give ``start_ms`` where a test's arithmetic
    assumes another origin (``0`` for a monotonic clock, ``1_700_000_000_000`` for a
    realistic wall clock).
    """

    def __init__(self, start_ms: int = 1_000_000) -> None:
        self.now_ms = start_ms

    @property
    def now_s(self) -> float:
        """The instant in seconds; assigning it moves the clock (rounded to the millisecond)."""
        return self.now_ms / 1000

    @now_s.setter
    def now_s(self, seconds: float) -> None:
        self.now_ms = round(seconds * 1000)

    def ms(self) -> int:
        """Wall-clock milliseconds, for a ``now_ms`` callable."""
        return self.now_ms

    def monotonic(self) -> float:
        """Monotonic seconds, for a ``monotonic_s`` callable."""
        return self.now_s

    def advance(self, ms: int) -> None:
        """Move the clock forward by ``ms`` milliseconds."""
        self.now_ms += ms

    def advance_s(self, seconds: float) -> None:
        """Move the clock forward by at least ``seconds``, rounded up to the millisecond.

        Rounding up means that waiting a ``retry_after_s`` a refusal named is always enough.
        """
        self.now_ms += math.ceil(seconds * 1000)


@dataclass
class StepTimedJob:
    """A job inside :class:`StepTimedEngine`: its request and the steps done so far."""

    request: Request
    done: int = 0

    @property
    def key(self) -> tuple[object, ...]:
        """The batch shape: jobs with equal keys may run together."""
        spec = self.request.spec
        return (spec.model, spec.width, spec.height)


@dataclass
class StepTimedEngine:
    """A ``DeviceEngine`` that takes ``step_s`` per step on its own thread, for scheduler tests.

    It admits jobs as the real runner does (only the running shape, in submission order),
    reports the same events at step boundaries, and its checkpoint is the number of steps
    done, so an evicted job resumes from the exact step. A paused job stops stepping
    until resumed, then goes ahead of every waiting job; it can be evicted or cancelled.
    The class itself is an ``EngineFactory``: ``DeviceWorker(..., StepTimedEngine, ...)``.
    """

    sink: EventSink
    step_s: float = STEP_S
    running: list[StepTimedJob] = field(default_factory=list)
    waiting: list[StepTimedJob] = field(default_factory=list)
    paused: list[StepTimedJob] = field(default_factory=list)
    _evict: set[str] = field(default_factory=set)
    _cancel: set[str] = field(default_factory=set)
    _pause: set[str] = field(default_factory=set)
    _resume: dict[str, None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the stepping thread."""
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop stepping and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def submit(self, request: Request, checkpoint: bytes | None = None) -> None:
        """Queue a job, resuming from the step count in ``checkpoint`` when there is one."""
        with self._lock:
            self.waiting.append(StepTimedJob(request, int(checkpoint or b"0")))

    def evict(self, job_id: str) -> None:
        """Take the job off the device at the next step boundary, with its checkpoint."""
        with self._lock:
            self._evict.add(job_id)

    def cancel(self, job_id: str) -> None:
        """Drop the job at the next step boundary."""
        with self._lock:
            self._cancel.add(job_id)

    def pause(self, job_id: str) -> None:
        """Set the running job aside at the next step boundary (a job not running then
        is left as it is)."""
        with self._lock:
            self._pause.add(job_id)

    def resume(self, job_id: str) -> None:
        """Put a paused job ahead of every waiting job at the next step boundary."""
        with self._lock:
            self._resume[job_id] = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                events = self._boundary()
            for event in events:
                self.sink(event)
            time.sleep(self.step_s)

    def _boundary(self) -> list[EngineEvent]:
        """One step boundary: drops first, then pauses and resumes, then admissions, then
        one step of every running job."""
        return [
            *self._drop_requested(),
            *self._pause_and_resume(),
            *self._admit(),
            *self._step(),
        ]

    def _drop_requested(self) -> list[EngineEvent]:
        events = []
        for pool in (self.running, self.waiting, self.paused):
            for job in list(pool):
                job_id = job.request.job_id
                if job_id in self._cancel:
                    pool.remove(job)
                    events.append(EngineEvent(job_id, Outcome.CANCELLED))
                elif job_id in self._evict:
                    pool.remove(job)
                    saved = str(job.done).encode()
                    events.append(EngineEvent(job_id, Outcome.EVICTED, job.done, checkpoint=saved))
        self._evict.clear()
        self._cancel.clear()
        return events

    def _pause_and_resume(self) -> list[EngineEvent]:
        events = []
        for job in [job for job in self.running if job.request.job_id in self._pause]:
            self.running.remove(job)
            self.paused.append(job)
            events.append(
                EngineEvent(job.request.job_id, Outcome.PAUSED, job.done, job.request.steps)
            )
        resumed = [job for i in self._resume for job in self.paused if job.request.job_id == i]
        for job in resumed:
            self.paused.remove(job)
        self.waiting[:0] = resumed
        self._pause.clear()
        self._resume.clear()
        return events

    def _admit(self) -> list[EngineEvent]:
        events = []
        for job in list(self.waiting):
            if not self.running or job.key == self.running[0].key:
                self.waiting.remove(job)
                self.running.append(job)
                events.append(EngineEvent(job.request.job_id, Outcome.STARTED, job.done))
        return events

    def _step(self) -> list[EngineEvent]:
        events = []
        for job in list(self.running):
            job.done += 1
            total = job.request.steps
            if job.done >= total:
                self.running.remove(job)
                images = (Image.new("RGB", (8, 8)),) * job.request.spec.n
                events.append(
                    EngineEvent(job.request.job_id, Outcome.FINISHED, total, total, 0.0, images)
                )
            else:
                events.append(EngineEvent(job.request.job_id, Outcome.PROGRESS, job.done, total))
        return events


class FaultyLedger:
    """A ``JobLedger`` that hands every call to a real one, except the calls a test breaks:
    those raise the error it gave (for one job or any, a number of times or until mended)."""

    def __init__(self, inner: JobLedger) -> None:
        self.inner = inner
        self._faults: dict[str, tuple[Exception, str | None, int | None]] = {}

    def fail(
        self, call: str, error: Exception, *, job_id: str | None = None, times: int | None = None
    ) -> None:
        """Make ``call`` (``"claimed"``, ``"succeeded"``...) raise ``error``: for ``job_id``
        only if given, the next ``times`` calls if given, else until :meth:`mend`."""
        self._faults[call] = (error, job_id, times)

    def mend(self, call: str) -> None:
        """Let ``call`` through again."""
        self._faults.pop(call, None)

    def _check(self, call: str, job_id: str) -> None:
        fault = self._faults.get(call)
        if fault is None or fault[1] not in (None, job_id):
            return
        error, only, times = fault
        if times is not None:
            if times <= 1:
                self.mend(call)
            else:
                self._faults[call] = (error, only, times - 1)
        raise error.with_traceback(None)

    async def claimed(self, attempt: Attempt) -> bool:
        """The real ledger's, unless broken."""
        self._check("claimed", attempt.job_id)
        return await self.inner.claimed(attempt)

    async def checkpoint(self, job_id: str) -> bytes | None:
        """The real ledger's, unless broken."""
        self._check("checkpoint", job_id)
        return await self.inner.checkpoint(job_id)

    async def progress(self, attempt: Attempt, step: int, total: int) -> None:
        """The real ledger's, unless broken."""
        self._check("progress", attempt.job_id)
        await self.inner.progress(attempt, step, total)

    async def requeued(self, attempt: Attempt, checkpoint: bytes | None) -> None:
        """The real ledger's, unless broken."""
        self._check("requeued", attempt.job_id)
        await self.inner.requeued(attempt, checkpoint)

    async def succeeded(
        self, job: Job, attempt: Attempt, images: Sequence[ResultImage], run_s: float
    ) -> tuple[str, ...]:
        """The real ledger's, unless broken."""
        self._check("succeeded", attempt.job_id)
        return await self.inner.succeeded(job, attempt, images, run_s)

    async def failed(self, attempt: Attempt, reason: str) -> None:
        """The real ledger's, unless broken."""
        self._check("failed", attempt.job_id)
        await self.inner.failed(attempt, reason)

    async def cancelled(self, attempt: Attempt) -> None:
        """The real ledger's, unless broken."""
        self._check("cancelled", attempt.job_id)
        await self.inner.cancelled(attempt)


class FlakyQueue:
    """A ``JobQueue`` that hands every call to a real one, except while a test has taken
    the store down for some calls: those raise ``QueueUnavailableError`` (or the error
    given) and change nothing. ``calls`` counts each call by name; ``acked`` and
    ``requeued`` list the job of each ack and requeue the real queue accepted."""

    def __init__(self, inner: JobQueue) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.acked: list[str] = []
        self.requeued: list[str] = []
        self._down: dict[str, Exception] = {}

    def outage(self, *calls: str, error: Exception | None = None) -> None:
        """Make ``calls`` (``"renew"``, ``"claim"``...) fail until :meth:`restore`."""
        for call in calls:
            self._down[call] = error or QueueUnavailableError("fake", "connection refused")

    def restore(self) -> None:
        """Every call goes through again."""
        self._down.clear()

    def _check(self, call: str) -> None:
        self.calls[call] += 1
        error = self._down.get(call)
        if error is not None:
            raise error.with_traceback(None)

    async def enqueue(self, job: Job) -> bool:
        """The real queue's, unless down."""
        self._check("enqueue")
        return await self.inner.enqueue(job)

    async def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        wait_s: float = 0.0,
        allow: ClaimFilter = EVERYTHING,
    ) -> Lease | None:
        """The real queue's, unless down."""
        self._check("claim")
        return await self.inner.claim(worker_id, lease_s=lease_s, wait_s=wait_s, allow=allow)

    async def peek(self, allow: ClaimFilter = EVERYTHING) -> Head | None:
        """The real queue's, unless down."""
        self._check("peek")
        return await self.inner.peek(allow)

    async def renew(self, lease: Lease, *, lease_s: float) -> Lease:
        """The real queue's, unless down."""
        self._check("renew")
        return await self.inner.renew(lease, lease_s=lease_s)

    async def ack(self, lease: Lease) -> None:
        """The real queue's, unless down."""
        self._check("ack")
        await self.inner.ack(lease)
        self.acked.append(lease.job.id)

    async def requeue(self, lease: Lease, *, checkpoint: bytes | None = None) -> None:
        """The real queue's, unless down."""
        self._check("requeue")
        await self.inner.requeue(lease, checkpoint=checkpoint)
        self.requeued.append(lease.job.id)

    async def set_paused(self, lease: Lease, paused: bool) -> None:
        """The real queue's, unless down."""
        self._check("set_paused")
        await self.inner.set_paused(lease, paused)

    async def cancel(self, job_id: str) -> bool:
        """The real queue's, unless down."""
        self._check("cancel")
        return await self.inner.cancel(job_id)

    async def is_cancelled(self, job_id: str) -> bool:
        """The real queue's, unless down."""
        self._check("is_cancelled")
        return await self.inner.is_cancelled(job_id)

    async def depth(self, lane: Lane | None = None) -> int:
        """The real queue's, unless down."""
        self._check("depth")
        return await self.inner.depth(lane)

    async def position(self, job_id: str) -> int | None:
        """The real queue's, unless down."""
        self._check("position")
        return await self.inner.position(job_id)

    async def queued_cost_s(self, lane: Lane | None = None) -> float:
        """The real queue's, unless down."""
        self._check("queued_cost_s")
        return await self.inner.queued_cost_s(lane)

    async def close(self) -> None:
        """The real queue's."""
        await self.inner.close()
