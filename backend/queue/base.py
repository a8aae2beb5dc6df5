"""The ``JobQueue`` contract: every backend (memory, Redis) implements exactly this."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from backend.models import Job, Lane
from backend.scheduling.fairness import EVERYTHING, LANE_ORDER, ClaimFilter

__all__ = ["EVERYTHING", "LANE_ORDER", "ClaimFilter", "Head", "JobQueue", "Lease", "LostBecause"]


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a job, valid until ``expires_at_ms`` unless renewed.

    ``token`` identifies this claim. It stays good for an ack or a requeue after the
    lease expired, until another claim of the job supersedes it: only then is the
    holder's result stale. ``expires_at_ms`` is on the backend's clock (the Redis
    server's for the Redis queue), not the caller's. ``checkpoint`` is the saved state
    of a job that was requeued part-way, to resume from.
    """

    job: Job
    worker_id: str
    token: str
    attempt: int
    expires_at_ms: int
    checkpoint: bytes | None = None


class LostBecause(StrEnum):
    """Why a lease can no longer act on its job (``LeaseLostError.reason``)."""

    SUPERSEDED = "another claim of the job superseded it"
    RECLAIMED = "its expired lease was reclaimed and the job queued again"
    UNKNOWN = "the queue no longer has the job"


@dataclass(frozen=True, slots=True)
class Head:
    """The job a claim would take next, and whether aging put it there."""

    job: Job
    aged: bool


@runtime_checkable
class JobQueue(Protocol):
    """Queued and leased jobs. Implementations are safe to share between tasks.

    A job is handed to one holder at a time: a claim supersedes every earlier lease of
    the job, and only a superseded lease is stale. Every method raises
    ``QueueUnavailableError`` when the backend's store cannot be reached, and the
    lease methods raise ``LeaseLostError`` (with a :class:`LostBecause`) when the
    lease can no longer act on its job; both are ``QueueError``.
    """

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
        """Extend a lease to ``lease_s`` from now, also one that expired while nobody
        reclaimed it; LeaseLostError once it was reclaimed or superseded."""
        ...

    async def ack(self, lease: Lease) -> None:
        """The job is finished (succeeded or failed for good): forget it, so it never
        runs again. Accepted after the lease expired too, until another claim
        supersedes it (then LeaseLostError: discard the result). A repeated ack, or one
        for a job the queue no longer has, changes nothing."""
        ...

    async def requeue(self, lease: Lease, *, checkpoint: bytes | None = None) -> None:
        """Give the job back to the queue with ``checkpoint`` to resume from; a
        cancelled job is dropped instead. Accepted after the lease expired too; a job
        already reclaimed keeps its place and takes the checkpoint. LeaseLostError once
        superseded, or for a job the queue no longer has."""
        ...

    async def set_paused(self, lease: Lease, paused: bool) -> None:
        """The leased job is paused in place on its device (``paused``), or runs again:
        a paused job does not count against its user's running cap, as it takes no
        device time; running again, it counts again even over the cap. Repeating
        either changes nothing; a lease that no longer holds its job is ignored."""
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
