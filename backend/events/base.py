"""The event-bus contract: what happens to a job, and how a follower receives it.

Every bus (the in-process one in ``memory``) implements :class:`EventBus`; what it hands
a follower implements :class:`Subscription`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

__all__ = ["EventBus", "EventKind", "JobEvent", "Subscription"]


class EventKind(StrEnum):
    """What happened to a job; the last three end it."""

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
        """Whether no event of the job follows this one."""
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


@runtime_checkable
class Subscription(Protocol):
    """The events of one job (or of every job), from the moment of subscribing.

    Iterating a job's subscription ends after that job's final event; an every-job
    subscription runs until closed. Iteration ending, however it ends, closes it.
    """

    @property
    def job_id(self) -> str | None:
        """The job followed; None for every job."""
        ...

    def __aiter__(self) -> AsyncIterator[JobEvent]: ...

    def close(self) -> None:
        """Stop receiving events; closing twice is harmless."""
        ...


@runtime_checkable
class EventBus(Protocol):
    """Fans job events out to subscriptions; publishing never blocks and never fails
    because a reader is slow (a reader that falls behind loses old progress, never a
    final event)."""

    def subscribe(self, job_id: str | None = None) -> Subscription:
        """Follow one job until its final event, or every job (``None``) until closed."""
        ...

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``; unknown ones are ignored."""
        ...

    def publish(self, event: JobEvent) -> None:
        """Deliver ``event`` to the subscriptions of its job and of every job."""
        ...
