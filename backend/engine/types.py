"""Values the engine exchanges with its callers; torch-free, so workers and fakes can
import them without loading torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from PIL import Image

from backend.models import JobSpec


@dataclass(frozen=True, slots=True)
class Request:
    """What the engine runs for one job: a resolved spec and, for img2img, a source.

    ``strength`` is the fraction of the schedule that is re-noised and denoised
    again for image-to-image (variation, upscale); ``None`` means text-to-image.
    """

    job_id: str
    spec: JobSpec
    init_image: Image.Image | None = None
    strength: float | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        if spec.model is None or spec.steps is None or spec.scheduler is None:
            raise ValueError("a Request needs a spec resolved by the model catalog")
        if (self.init_image is None) != (self.strength is None):
            raise ValueError("init_image and strength go together")
        if self.strength is not None and not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")

    @property
    def steps(self) -> int:
        """The step count the catalog resolved."""
        assert self.spec.steps is not None
        return self.spec.steps


class Outcome(StrEnum):
    """What an :class:`EngineEvent` reports about its job."""

    PROGRESS = "progress"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    EVICTED = "evicted"
    CANCELLED = "cancelled"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """What happened to a job at a step boundary.

    ``images`` for FINISHED (one per sample), ``checkpoint`` for EVICTED (None if the
    job never started), ``error`` for FAILED, ``preview`` (encoded image bytes) on
    some PROGRESS events. ``quarantined`` on STARTED says why the checkpoint the job
    was submitted with could not be loaded: the engine dropped it and the job started
    over from its first step, so a stored copy of it can be discarded too.
    """

    job_id: str
    outcome: Outcome
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    images: tuple[Any, ...] = ()
    checkpoint: bytes | None = None
    error: str | None = None
    preview: bytes | None = None
    quarantined: str | None = None


EventSink = Callable[[EngineEvent], None]


class DeviceEngine(Protocol):
    """A device's engine as a worker drives it (``DeviceRunner``, or a fake in tests).

    Events are delivered to the sink given at construction, on any thread.
    """

    def start(self) -> None:
        """Start the device's stepping thread."""
        ...

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop stepping, waiting up to ``timeout_s`` for the thread."""
        ...

    def submit(self, request: Request, checkpoint: bytes | None = None) -> None:
        """Queue a job for the device, resuming from ``checkpoint`` when there is one."""
        ...

    def evict(self, job_id: str) -> None:
        """Take the job off the device at the next step boundary, reporting its checkpoint."""
        ...

    def cancel(self, job_id: str) -> None:
        """Drop the job at the next step boundary."""
        ...

    def pause(self, job_id: str) -> None:
        """Set the running job aside at the next step boundary, its state kept on the
        device, until resume."""
        ...

    def resume(self, job_id: str) -> None:
        """Let a paused job be admitted again at the next boundary, ahead of jobs that
        never ran."""
        ...


EngineFactory = Callable[[EventSink], DeviceEngine]
