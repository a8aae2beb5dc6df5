"""The ``JobQueue`` contract: every backend (memory, Redis) implements exactly this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from backend.models import Job, Lane
from backend.scheduling.fairness import EVERYTHING, LANE_ORDER, ClaimFilter

__all__ = ["EVERYTHING", "LANE_ORDER", "ClaimFilter", "Head", "JobQueue", "Lease"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a job, valid until ``expires_at_ms`` unless renewed.

    ``token`` identifies this claim: a renew, ack or requeue with a stale token (the
    lease expired and someone else claimed the job) is refused. ``checkpoint`` is the
    saved state of a job that was requeued part-way, to resume from.
    """

    job: Job
    worker_id: str
    token: str
    attempt: int
    expires_at_ms: int
    checkpoint: bytes | None = None


@dataclass(frozen=True, slots=True)
class Head:
    """The job a claim would take next, and whether aging put it there."""

    job: Job
    aged: bool


@runtime_checkable
class JobQueue(Protocol):
    """Queued and leased jobs. Implementations are safe to share between tasks."""

    async def enqueue(self, job: Job) -> bool:
        """Queue ``job``; False (and no change) if a job with its id is already known."""
        ...

    async def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        wait_s: float = 0.0,
        allow: ClaimFilter = EVERYTHING,
    ) -> Lease | None:
        """Take the next job in fair order (``backend.scheduling.fairness``) that ``allow``
        permits, waiting up to ``wait_s`` for one; None if none came."""
        ...

    async def peek(self, allow: ClaimFilter = EVERYTHING) -> Head | None:
        """The job :meth:`claim` would take now, left queued."""
        ...

    async def renew(self, lease: Lease, *, lease_s: float) -> Lease:
        """Extend a lease; raises QueueError if it was lost."""
        ...

    async def ack(self, lease: Lease) -> None:
        """The job is finished (succeeded or failed for good): forget it."""
        ...

    async def requeue(self, lease: Lease, *, checkpoint: bytes | None = None) -> None:
        """Give the job back to the queue, optionally with a checkpoint to resume from."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Drop a queued job or flag a running one; True if the job was known."""
        ...

    async def is_cancelled(self, job_id: str) -> bool:
        """Whether a running job was asked to stop."""
        ...

    async def depth(self, lane: Lane | None = None) -> int:
        """Number of queued (not leased) jobs, in one lane or all."""
        ...

    async def position(self, job_id: str) -> int | None:
        """0-based place of a queued job in its lane's fair order; None if not queued."""
        ...

    async def queued_cost_s(self, lane: Lane | None = None) -> float:
        """Sum of the estimated device-seconds of queued jobs, in one lane or all."""
        ...

    async def close(self) -> None:
        """Release connections; queued work stays where the backend keeps it."""
        ...
