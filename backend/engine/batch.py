"""Step-level continuous batching on one device.

:class:`BatchCore` is the synchronous heart, driven one step boundary at a time:
it applies evictions and cancellations, admits waiting jobs whose latents have
the running batch's shape, runs one shared UNet forward, and retires finished
jobs. :class:`DeviceRunner` drives a core on its own thread, so the event loop
never blocks, and reports :class:`EngineEvent` values through a callback.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog
import torch

from backend.engine import state as checkpoints
from backend.engine.preview import PreviewMaker
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import ActiveJob, denoise_step
from backend.engine.types import EngineEvent, Outcome, Request
from backend.errors import BackendError, CheckpointError, JobError

log = structlog.get_logger(__name__)

RuntimeSource = Callable[[str], ModelRuntime]


class BatchKey(NamedTuple):
    """What jobs must share to run in one UNet forward: the model and the latent shape."""

    model: str
    channels: int
    latent_height: int
    latent_width: int

    @classmethod
    def of(cls, job: ActiveJob) -> BatchKey:
        """The key of a prepared or restored job."""
        return cls(*job.key)


@dataclass(slots=True)
class _Waiting:
    request: Request
    checkpoint: bytes | None = None
    active: ActiveJob | None = None  # prepared earlier (split off after out-of-memory)


@dataclass(slots=True)
class BatchLimits:
    """Rows (UNet batch entries, two per guided sample) a step may carry."""

    max_rows: int = 16
    rows_by_key: dict[BatchKey, int] = field(default_factory=dict)

    def rows_for(self, key: BatchKey) -> int:
        """The row cap for ``key``: lowered after running out of memory, else the max."""
        return self.rows_by_key.get(key, self.max_rows)


class BatchCore:
    """The running set of one device; not thread-safe (one owner thread)."""

    def __init__(
        self,
        runtimes: RuntimeSource,
        limits: BatchLimits | None = None,
        previews: PreviewMaker | None = None,
        memory_rows: Callable[[ModelRuntime, BatchKey], int | None] | None = None,
    ) -> None:
        self._runtimes = runtimes
        self.limits = limits or BatchLimits()
        self._previews = previews
        self._memory_rows = memory_rows
        self.waiting: list[_Waiting] = []
        self.running: list[ActiveJob] = []
        self._evict: set[str] = set()
        self._cancel: set[str] = set()
        self.step_s: float | None = None  # moving average of the last step times
        self.last_step_s: float | None = None  # the last shared step alone (no admit/decode)
        self.steps_run = 0

    # -- requests from the owner ------------------------------------------------------

    def submit(self, request: Request, checkpoint: bytes | None = None) -> None:
        """Wait for admission at a step boundary (in submission order)."""
        self.waiting.append(_Waiting(request, checkpoint))

    def evict(self, job_id: str) -> None:
        """Take the job off the device at the next boundary, keeping its state."""
        self._evict.add(job_id)

    def cancel(self, job_id: str) -> None:
        """Drop the job at the next boundary."""
        self._cancel.add(job_id)

    @property
    def idle(self) -> bool:
        """Nothing running, waiting or pending removal."""
        return not self.running and not self.waiting and not self._evict and not self._cancel

    @property
    def models_in_use(self) -> frozenset[str]:
        """Models of running and prepared jobs (not to be unloaded)."""
        active = [job.runtime.name for job in self.running]
        active += [w.active.runtime.name for w in self.waiting if w.active is not None]
        return frozenset(active)

    @property
    def running_rows(self) -> int:
        """Rows the running batch takes."""
        return sum(job.rows for job in self.running)

    @property
    def key(self) -> BatchKey | None:
        """The (model, latent shape) in service, if any."""
        return BatchKey.of(self.running[0]) if self.running else None

    # -- one step boundary ----------------------------------------------------------------

    def step(self) -> list[EngineEvent]:
        """Apply pending evictions, admit, run one shared step, retire finished jobs."""
        events = self._apply_removals()
        events += self._admit()
        if not self.running:
            return events
        runtime = self.running[0].runtime
        started = time.perf_counter()
        try:
            failures = denoise_step(runtime, self.running)
        except torch.OutOfMemoryError:
            return events + self._split_after_oom(runtime)
        elapsed = time.perf_counter() - started
        self.last_step_s = elapsed
        self.step_s = elapsed if self.step_s is None else 0.8 * self.step_s + 0.2 * elapsed
        self.steps_run += 1
        for job_id, exc in failures.items():
            events.append(EngineEvent(job_id, Outcome.FAILED, error=str(exc)))
        self.running = [job for job in self.running if job.job_id not in failures]
        return events + self._progress_and_retire()

    def _apply_removals(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        if not (self._evict or self._cancel):
            return events
        kept_running = []
        for job in self.running:
            if job.job_id in self._cancel:
                events.append(EngineEvent(job.job_id, Outcome.CANCELLED, *job.progress))
            elif job.job_id in self._evict:
                blob = checkpoints.dumps(job.state())
                events.append(
                    EngineEvent(job.job_id, Outcome.EVICTED, *job.progress, checkpoint=blob)
                )
            else:
                kept_running.append(job)
        kept_waiting = []
        for entry in self.waiting:
            job_id = entry.request.job_id
            if job_id in self._cancel:
                events.append(EngineEvent(job_id, Outcome.CANCELLED))
            elif job_id in self._evict:
                saved = entry.checkpoint
                if entry.active is not None and entry.active.latents is not None:
                    saved = checkpoints.dumps(entry.active.state())
                events.append(EngineEvent(job_id, Outcome.EVICTED, checkpoint=saved))
            else:
                kept_waiting.append(entry)
        self.running, self.waiting = kept_running, kept_waiting
        self._evict.clear()
        self._cancel.clear()
        return events

    def _admit(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        key = self.key
        rows = self.running_rows
        remaining = []
        for entry in self.waiting:
            try:
                job = entry.active or self._activate(entry)
            except (JobError, BackendError, ValueError, OSError) as exc:
                events.append(EngineEvent(entry.request.job_id, Outcome.FAILED, error=str(exc)))
                continue
            entry.active = job
            if key is None:
                key = BatchKey.of(job)
            cap = self._cap(job.runtime, key)
            # A job bigger than the cap still runs, alone, rather than never.
            fits = rows + job.rows <= cap or not self.running
            if BatchKey.of(job) == key and fits:
                self.running.append(job)
                rows += job.rows
                events.append(EngineEvent(job.job_id, Outcome.STARTED, *job.progress))
            else:
                remaining.append(entry)
        self.waiting = remaining
        return events

    def _activate(self, entry: _Waiting) -> ActiveJob:
        request = entry.request
        assert request.spec.model is not None
        job = ActiveJob(request, self._runtimes(request.spec.model))
        if entry.checkpoint is not None:
            try:
                saved = checkpoints.loads(entry.checkpoint, job.runtime.device)
            except CheckpointError as exc:
                raise CheckpointError(exc.problem, request.job_id) from exc
            job.restore(saved)
        else:
            job.prepare()
        return job

    def _cap(self, runtime: ModelRuntime, key: BatchKey) -> int:
        cap = self.limits.rows_for(key)
        if self._memory_rows is not None:
            by_memory = self._memory_rows(runtime, key)
            if by_memory is not None:
                cap = min(cap, by_memory)
        return max(cap, 1)

    def _split_after_oom(self, runtime: ModelRuntime) -> list[EngineEvent]:
        """Halve the batch: the tail goes back to the front of the waiting list."""
        if runtime.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(self.running) == 1:
            job = self.running.pop()
            reason = "out of device memory even alone"
            return [EngineEvent(job.job_id, Outcome.FAILED, error=reason)]
        key = BatchKey.of(self.running[0])
        half = len(self.running) // 2
        kept, moved = self.running[:half], self.running[half:]
        self.limits.rows_by_key[key] = max(1, sum(job.rows for job in kept))
        self.running = kept
        self.waiting[:0] = [_Waiting(job.request, None, job) for job in moved]
        log.warning("batch_split_oom", key=str(key), rows=self.limits.rows_by_key[key])
        return []

    def _progress_and_retire(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        still = []
        for job in self.running:
            done, total = job.progress
            if job.done:
                try:
                    assert job.latents is not None
                    images = tuple(job.runtime.decode(job.latents, job.generators))
                except (RuntimeError, ValueError) as exc:
                    events.append(EngineEvent(job.job_id, Outcome.FAILED, error=str(exc)))
                    continue
                events.append(EngineEvent(job.job_id, Outcome.FINISHED, done, total, 0.0, images))
                continue
            still.append(job)
            eta = self.step_s * (total - done) if self.step_s is not None else None
            preview = None
            if self._previews is not None:
                preview = self._previews.maybe(job, done)
            events.append(
                EngineEvent(job.job_id, Outcome.PROGRESS, done, total, eta, preview=preview)
            )
        self.running = still
        return events


class DeviceRunner:
    """Runs a :class:`BatchCore` on a dedicated thread; thread-safe commands in.

    ``on_event`` is called on the device thread; hand events to an event loop with
    ``loop.call_soon_threadsafe``. ``batch_window_s`` applies only when the device
    is idle: the first job waits that long for near-simultaneous ones to join.
    """

    def __init__(
        self,
        core: BatchCore,
        on_event: Callable[[EngineEvent], None],
        *,
        name: str = "cpu",
        batch_window_s: float = 0.05,
    ) -> None:
        self.core = core
        self.name = name
        self._on_event = on_event
        self._window_s = batch_window_s
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"device-{name}", daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the device thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the device thread after its current step (waits up to ``timeout_s``)."""
        self._stop.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout_s)

    def submit(self, request: Request, checkpoint: bytes | None = None) -> None:
        """Queue a job (from ``checkpoint`` if given) for admission at a boundary."""
        self._commands.put(("submit", (request, checkpoint)))

    def evict(self, job_id: str) -> None:
        """Take the job off the device at the next boundary, keeping its state."""
        self._commands.put(("evict", job_id))

    def cancel(self, job_id: str) -> None:
        """Drop the job at the next boundary."""
        self._commands.put(("cancel", job_id))

    def _drain(self, block_s: float | None) -> bool:
        """Apply queued commands; wait up to ``block_s`` for the first. True if any came."""
        got = False
        with contextlib.suppress(queue.Empty):
            command = (
                self._commands.get(timeout=block_s) if block_s else self._commands.get_nowait()
            )
            self._apply(command)
            got = True
            while True:
                self._apply(self._commands.get_nowait())
        return got

    def _apply(self, command: tuple[str, Any]) -> None:
        kind, value = command
        if kind == "submit":
            self.core.submit(*value)
        elif kind == "evict":
            self.core.evict(value)
        elif kind == "cancel":
            self.core.cancel(value)

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                if self.core.idle:
                    if not self._drain(0.5):
                        continue
                    if self._window_s > 0 and not self.core.running:
                        time.sleep(self._window_s)  # let near-simultaneous jobs join
                self._drain(None)
                self._run_boundary()

    def _run_boundary(self) -> None:
        try:
            events = self.core.step()
        except Exception as exc:  # a bug in one step must not kill the device thread
            log.exception("device_step_failed", device=self.name)
            events = [
                EngineEvent(job.job_id, Outcome.FAILED, error=f"engine error: {exc}")
                for job in self.core.running
            ]
            self.core.running = []
        for event in events:
            try:
                self._on_event(event)
            except Exception:
                log.exception("device_event_handler_failed", job_id=event.job_id)
