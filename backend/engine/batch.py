"""Step-level continuous batching on one device.

:class:`BatchCore` is the synchronous heart, driven one step boundary at a time:
it applies evictions, cancellations and pauses, admits waiting jobs whose latents
have the running batch's shape, runs one shared UNet forward, and retires
finished jobs. A paused job is set aside with its state kept on the device
(nothing saved) until it is resumed, evicted or cancelled. :class:`DeviceRunner`
drives a core on its own thread, so the event loop never blocks, and reports
:class:`EngineEvent` values through a callback.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from backend.errors import BackendError, JobError

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
    active: ActiveJob | None = None  # prepared earlier (split off after out-of-memory, paused)
    quarantined: str | None = None  # why its checkpoint was dropped, once it was


@dataclass(slots=True)
class _Probe:
    """How a key's lowered row cap is probed back up."""

    interval_steps: int  # full steps to run at the cap before raising it
    full_steps: int = 0  # full steps run at the current cap
    proved: int | None = None  # the cap before the last raise, proved by full steps


@dataclass(slots=True)
class BatchLimits:
    """Rows (UNet batch entries, two per guided sample) a step may carry.

    Running out of memory lowers the cap of that key; after ``probe_after_steps``
    steps that filled the lowered cap, it is raised by one job's rows, and again,
    up to ``max_rows``. A raise that runs out of memory falls back to the cap it
    was raised from, and the next probe waits twice as long.
    """

    max_rows: int = 16
    probe_after_steps: int = 25
    rows_by_key: dict[BatchKey, int] = field(default_factory=dict)
    _probes: dict[BatchKey, _Probe] = field(default_factory=dict)

    def rows_for(self, key: BatchKey) -> int:
        """The row cap for ``key``: lowered after running out of memory, else the max."""
        return self.rows_by_key.get(key, self.max_rows)

    def lowered(self, key: BatchKey, failed_rows: int, kept_rows: int) -> int:
        """Record that ``failed_rows`` ran out of memory; returns the key's new cap."""
        probe = self._probes.get(key)
        if probe is None:
            probe = self._probes[key] = _Probe(self.probe_after_steps)
        else:
            probe.interval_steps = min(2 * probe.interval_steps, 64 * self.probe_after_steps)
        cap = kept_rows
        if probe.proved is not None and probe.proved < failed_rows:
            cap = max(cap, probe.proved)
        else:
            probe.proved = None
        probe.full_steps = 0
        self.rows_by_key[key] = cap = max(1, cap)
        return cap

    def stepped(self, key: BatchKey, rows: int, job_rows: int) -> int | None:
        """Count a step of ``rows`` that ran; returns the raised cap when it probes up.

        A step counts when it filled the lowered cap (no room for another job of
        ``job_rows``); a probe raises the cap by ``job_rows``.
        """
        cap = self.rows_by_key.get(key)
        if cap is None or rows + job_rows <= cap:
            return None
        probe = self._probes[key]
        probe.full_steps += 1
        if probe.full_steps < probe.interval_steps:
            return None
        probe.full_steps = 0
        probe.proved = cap
        raised = min(cap + job_rows, self.max_rows)
        if raised >= self.max_rows:
            del self.rows_by_key[key]
        else:
            self.rows_by_key[key] = raised
        return raised


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
        self.paused: dict[str, _Waiting] = {}  # set aside, state kept, in pause order
        self._evict: set[str] = set()
        self._cancel: set[str] = set()
        self._pause: set[str] = set()
        self._resume: dict[str, None] = {}  # in request order
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

    def pause(self, job_id: str) -> None:
        """Set the running job aside at the next boundary, its state kept on the device;
        a job not running then is left as it is."""
        self._pause.add(job_id)

    def resume(self, job_id: str) -> None:
        """Put a paused job at the front of the waiting list at the next boundary."""
        self._resume[job_id] = None

    @property
    def idle(self) -> bool:
        """Nothing running, waiting or pending; paused jobs may remain (see :attr:`held`)."""
        pending = self._evict or self._cancel or self._pause or self._resume
        return not self.running and not self.waiting and not pending

    @property
    def held(self) -> bool:
        """Whether paused jobs keep state on the device."""
        return bool(self.paused)

    @property
    def models_in_use(self) -> frozenset[str]:
        """Models of running, prepared and paused jobs (not to be unloaded)."""
        active = [job.runtime.name for job in self.running]
        for entry in [*self.waiting, *self.paused.values()]:
            if entry.active is not None:
                active.append(entry.active.runtime.name)
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
        """Apply pending removals, pauses and resumes, admit, run one shared step,
        retire finished jobs."""
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
        self._probe_rows()
        for job_id, exc in failures.items():
            events.append(EngineEvent(job_id, Outcome.FAILED, error=str(exc)))
        self.running = [job for job in self.running if job.job_id not in failures]
        return events + self._progress_and_retire()

    def _apply_removals(self) -> list[EngineEvent]:
        """Cancellations, then evictions, then pauses; resumes last."""
        events: list[EngineEvent] = []
        if not (self._evict or self._cancel or self._pause or self._resume):
            return events
        kept_running = []
        for job in self.running:
            if job.job_id in self._cancel:
                events.append(EngineEvent(job.job_id, Outcome.CANCELLED, *job.progress))
            elif job.job_id in self._evict:
                events.append(self._evicted(job))
            elif job.job_id in self._pause:
                self.paused[job.job_id] = _Waiting(job.request, None, job)
                events.append(EngineEvent(job.job_id, Outcome.PAUSED, *job.progress))
            else:
                kept_running.append(job)
        kept_waiting = []
        for entry in self.waiting:
            job_id = entry.request.job_id
            if job_id in self._cancel:
                events.append(EngineEvent(job_id, Outcome.CANCELLED))
            elif job_id in self._evict:
                active = entry.active
                if active is not None and active.latents is not None:
                    events.append(self._evicted(active))
                else:
                    events.append(EngineEvent(job_id, Outcome.EVICTED, checkpoint=entry.checkpoint))
            else:
                kept_waiting.append(entry)
        self.running, self.waiting = kept_running, kept_waiting
        events += self._remove_paused()
        self._resume_paused()
        self._evict.clear()
        self._cancel.clear()
        self._pause.clear()
        self._resume.clear()
        return events

    def _remove_paused(self) -> list[EngineEvent]:
        """Paused jobs cancelled (with their progress) or evicted (with a checkpoint)."""
        events: list[EngineEvent] = []
        for job_id in [j for j in self.paused if j in self._cancel or j in self._evict]:
            active = self.paused.pop(job_id).active
            assert active is not None
            if job_id in self._cancel:
                events.append(EngineEvent(job_id, Outcome.CANCELLED, *active.progress))
            else:
                events.append(self._evicted(active))
        return events

    def _resume_paused(self) -> None:
        """Resumed jobs go to the front of the waiting list, in the order resumed."""
        resumed = [self.paused.pop(job_id) for job_id in self._resume if job_id in self.paused]
        self.waiting[:0] = resumed

    @staticmethod
    def _evicted(job: ActiveJob) -> EngineEvent:
        """EVICTED with the job's checkpoint, or FAILED (this job alone) if it cannot be saved."""
        try:
            blob = checkpoints.dumps(job.state())
        except Exception as exc:  # any failure to save is this job's alone
            log.exception("checkpoint_save_failed", job_id=job.job_id)
            reason = f"checkpoint could not be saved: {type(exc).__name__}: {exc}"
            return EngineEvent(job.job_id, Outcome.FAILED, *job.progress, error=reason)
        return EngineEvent(job.job_id, Outcome.EVICTED, *job.progress, checkpoint=blob)

    def _admit(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        key = self.key
        rows = self.running_rows
        remaining = []
        for entry in self.waiting:
            job = entry.active or self._activate(entry, events)
            if job is None:
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
                events.append(
                    EngineEvent(
                        job.job_id, Outcome.STARTED, *job.progress, quarantined=entry.quarantined
                    )
                )
            else:
                remaining.append(entry)
        self.waiting = remaining
        return events

    def _activate(self, entry: _Waiting, events: list[EngineEvent]) -> ActiveJob | None:
        """The entry's job, restored or prepared; None (and a FAILED event) if it cannot
        be set up. Whatever goes wrong stays with this job: the device goes on."""
        request = entry.request
        try:
            assert request.spec.model is not None
            runtime = self._runtimes(request.spec.model)
            job = self._restored(entry, runtime) if entry.checkpoint is not None else None
            if job is None:
                job = ActiveJob(request, runtime)
                job.prepare()
        except Exception as exc:  # one job's setup must never stall the device
            if not isinstance(exc, JobError | BackendError | ValueError | OSError):
                log.exception("job_setup_failed", job_id=request.job_id)
            events.append(EngineEvent(request.job_id, Outcome.FAILED, error=str(exc)))
            return None
        return job

    @staticmethod
    def _restored(entry: _Waiting, runtime: ModelRuntime) -> ActiveJob | None:
        """The job resumed from its checkpoint; None after quarantining an unusable one
        (the job then starts over from its first step)."""
        blob = entry.checkpoint
        assert blob is not None
        job = ActiveJob(entry.request, runtime)
        try:
            job.restore(checkpoints.loads(blob, runtime.device))
        except Exception as exc:  # any checkpoint that cannot be loaded is set aside
            reason = exc.problem if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "checkpoint_quarantined",
                job_id=entry.request.job_id,
                reason=reason,
                checkpoint_bytes=len(blob),
                sha256=hashlib.sha256(blob).hexdigest(),
            )
            entry.checkpoint = None
            entry.quarantined = reason
            return None
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
        failed_rows = self.running_rows
        half = len(self.running) // 2
        kept, moved = self.running[:half], self.running[half:]
        cap = self.limits.lowered(key, failed_rows, sum(job.rows for job in kept))
        self.running = kept
        self.waiting[:0] = [_Waiting(job.request, None, job) for job in moved]
        log.warning("batch_split_oom", key=str(key), failed_rows=failed_rows, rows=cap)
        return []

    def _probe_rows(self) -> None:
        """After a step that ran, let a cap lowered by out-of-memory probe back up."""
        key = BatchKey.of(self.running[0])
        job_rows = max(job.rows for job in self.running)
        raised = self.limits.stepped(key, self.running_rows, job_rows)
        if raised is not None:
            log.info("batch_cap_probe", key=str(key), rows=raised)

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

    def pause(self, job_id: str) -> None:
        """Set the running job aside at the next boundary, its state kept on the device."""
        self._commands.put(("pause", job_id))

    def resume(self, job_id: str) -> None:
        """Let a paused job be admitted again at the next boundary, ahead of new jobs."""
        self._commands.put(("resume", job_id))

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
        elif kind == "pause":
            self.core.pause(value)
        elif kind == "resume":
            self.core.resume(value)

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
