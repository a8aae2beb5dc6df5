"""Hand-written fakes for our own Protocols, in one place: a clock and a step-timed engine.

Only our own contracts get fakes (house style); Redis, SQLite, diffusers and discord.py
are always the real thing.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from backend.engine.types import EngineEvent, EventSink, Outcome, Request

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
    done, so an evicted job resumes from the exact step. The class itself is an
    ``EngineFactory``: ``DeviceWorker(..., StepTimedEngine, ...)``.
    """

    sink: EventSink
    step_s: float = STEP_S
    running: list[StepTimedJob] = field(default_factory=list)
    waiting: list[StepTimedJob] = field(default_factory=list)
    _evict: set[str] = field(default_factory=set)
    _cancel: set[str] = field(default_factory=set)
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                events = self._boundary()
            for event in events:
                self.sink(event)
            time.sleep(self.step_s)

    def _boundary(self) -> list[EngineEvent]:
        """One step boundary: drops first, then admissions, then one step of every running job."""
        return [*self._drop_requested(), *self._admit(), *self._step()]

    def _drop_requested(self) -> list[EngineEvent]:
        events = []
        for pool in (self.running, self.waiting):
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
