"""The ``JobLedger`` contract: everything a device worker records about the jobs it runs.

A worker never writes storage itself; it tells its ledger what happened to each
attempt (a claim, step progress, a requeue with a checkpoint, a result, a failure, a
cancellation), and the ledger makes that what the front end reads: the job's state,
attempts, progress, error, images and the user's measured device time.

Every call is keyed by the job and the attempt (:class:`Attempt`) and is idempotent:
the same call twice changes nothing the second time (no second usage charge, no
duplicate image rows, attempts counted once, a finished job not finished again). A
call of a stale attempt, one that is no longer the last to have claimed the job, is
ignored (not refused: the call returns normally and records nothing), so a late
result never overwrites a newer attempt's. A finished job ignores everything.

The calls carry plain values (ids, numbers, bytes), so a worker on another host can
implement the contract over Redis and the process that owns SQLite applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from backend.errors import BackendError

if TYPE_CHECKING:
    from backend.models import Job
    from backend.queue.base import Lease

# The image index of a job's grid; its samples are 0, 1, ...
GRID_INDEX = -1


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claim of a job: the queue's attempt number and the lease's token.

    The number alone repeats when the queue loses a job (a Redis flush, a restart of the
    in-process queue) and the job is re-enqueued from SQLite; the token never does, so
    together they name one attempt.
    """

    job_id: str
    number: int
    token: str

    @classmethod
    def of(cls, lease: Lease) -> Attempt:
        """The attempt a lease grants."""
        return cls(lease.job.id, lease.attempt, lease.token)


@dataclass(frozen=True, slots=True)
class ResultImage:
    """One image of a finished job, encoded: ``index`` is :data:`GRID_INDEX` for the
    grid, 0.. for the samples."""

    index: int
    png: bytes
    width: int
    height: int


class UnknownJobError(BackendError):
    """The ledger has no record of the job a call names."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"the ledger has no job {job_id!r}")


@runtime_checkable
class JobLedger(Protocol):
    """Where a worker records its jobs. Every implementation passes
    ``tests/backend/worker/test_ledger_contract.py``. Calls that change a job the ledger
    does not know raise :class:`UnknownJobError`; progress, which stays cheap, ignores it."""

    async def claimed(self, attempt: Attempt) -> bool:
        """The attempt took the job: it is running, and its attempts count one more.

        Returns whether the attempt may run the job: True once the claim is recorded
        (also for the same claim again); False, recording nothing, if the job is
        finished (an earlier attempt's result was recorded after its lease lapsed) or
        running under a later attempt. A worker drops a job it may not run."""
        ...

    async def checkpoint(self, job_id: str) -> bytes | None:
        """The last checkpoint a requeue saved for the job (None if none, once the job
        succeeded, or for an unknown job): a resume point when the queue lost its own."""
        ...

    async def progress(self, attempt: Attempt, step: int, total: int) -> None:
        """The attempt finished denoising step ``step`` of ``total``. Never moves
        backwards within an attempt (a new claim starts again); an implementation may
        record only the latest step every so often, so the step loop never waits on it,
        but a requeue records the step reached."""
        ...

    async def requeued(self, attempt: Attempt, checkpoint: bytes | None) -> None:
        """The attempt gave the job back to the queue: it is queued again, with
        ``checkpoint`` (None: start over) kept to resume from."""
        ...

    async def succeeded(
        self, job: Job, attempt: Attempt, images: Sequence[ResultImage], run_s: float
    ) -> tuple[str, ...]:
        """The attempt finished the job after ``run_s`` device seconds: the images are
        stored (files by content hash) and recorded, the job succeeded, the time is
        charged once to the user's month (fast or relax by the job's speed) and a saved
        checkpoint is dropped.

        Returns the stored paths ordered by index (the grid first); a repeated call
        returns the first call's paths, a stale attempt's call returns ``()``.
        """
        ...

    async def failed(self, attempt: Attempt, reason: str) -> None:
        """The attempt ended the job with an error the user sees as ``reason``."""
        ...

    async def cancelled(self, attempt: Attempt) -> None:
        """The attempt stopped the job because it was cancelled."""
        ...
