"""The event-bus contract: what happens to a job, and how a follower receives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    STEP = "step"
    # Taken off a device at a step boundary and queued again, state kept.
    PREEMPTED = "preempted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (EventKind.SUCCEEDED, EventKind.FAILED, EventKind.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One thing that happened to a job. ``step``/``total`` for progress, ``eta_s`` when known,
    ``images`` (paths, the grid first) when it succeeded, ``error`` when it failed."""

    job_id: str
    kind: EventKind
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    images: tuple[str, ...] = ()
    error: str | None = None
    at_ms: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    preview: bytes | None = None
