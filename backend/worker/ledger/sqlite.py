"""The ledger over this process's SQLite database and image store, through the
repositories: what the embedded worker records.

Idempotency lives in SQLite: each call's key (job, lease token, entry) is written in
the transaction of its effect (``ledger_entries``), and a job's row names the attempt
that last claimed it, so a stale attempt's calls are ignored.

Progress is cheap by design: the latest step of each job is kept here, and written
(one UPDATE) on an attempt's first step and then at most every ``progress_every_s``;
a requeue writes the step reached together with the checkpoint. The front end's live
steps come from the event bus; the recorded step is for status after the fact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from backend.clock import monotonic_s, usage_month
from backend.models import Job
from backend.worker.ledger.base import Attempt, ResultImage, UnknownJobError
from storage.db import Database
from storage.errors import NotFoundError
from storage.images import ImageStore
from storage.repos.jobs import ImageRow
from storage.repos.users import UsageCharge

# Seconds between two recorded steps of one job.
PROGRESS_EVERY_S = 1.0


@dataclass(slots=True)
class _Progress:
    """The latest step of one attempt, and when a step of it was last written."""

    token: str
    step: int = 0
    total: int = 0
    written_s: float | None = None


class SqliteLedger:
    """A :class:`~backend.worker.ledger.base.JobLedger` writing ``db`` and ``images``."""

    def __init__(
        self,
        db: Database,
        images: ImageStore,
        *,
        progress_every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = monotonic_s,
    ) -> None:
        self._db = db
        self._images = images
        self._progress_every_s = progress_every_s
        self._clock = clock
        self._progress: dict[str, _Progress] = {}

    async def claimed(self, attempt: Attempt) -> bool:
        """Record the claim: the job is running, one more attempt counted; whether the
        attempt may run it."""
        jobs = self._db.jobs
        with _known(attempt.job_id):
            if await jobs.claim_attempt(attempt.job_id, attempt.number, attempt.token):
                self._progress.pop(attempt.job_id, None)
                return True
            return await jobs.runs_under(attempt.job_id, attempt.token)

    async def checkpoint(self, job_id: str) -> bytes | None:
        """The checkpoint SQLite keeps for the job, if any."""
        return await self._db.jobs.checkpoint(job_id)

    async def progress(self, attempt: Attempt, step: int, total: int) -> None:
        """Keep the latest step; write it on the attempt's first step, then at most
        every ``progress_every_s``."""
        latest = self._progress.get(attempt.job_id)
        if latest is None or latest.token != attempt.token:
            latest = self._progress[attempt.job_id] = _Progress(attempt.token)
        if step <= latest.step:
            return
        latest.step, latest.total = step, total
        now_s = self._clock()
        if latest.written_s is not None and now_s - latest.written_s < self._progress_every_s:
            return
        latest.written_s = now_s
        await self._db.jobs.record_progress(attempt.job_id, attempt.token, step, total)

    async def requeued(self, attempt: Attempt, checkpoint: bytes | None) -> None:
        """Save the checkpoint and the step reached; the job is queued again."""
        latest = self._forget(attempt)
        reached = (latest.step, latest.total) if latest is not None else None
        with _known(attempt.job_id):
            await self._db.jobs.requeue_attempt(
                attempt.job_id, attempt.number, attempt.token, checkpoint, reached
            )

    async def succeeded(
        self, job: Job, attempt: Attempt, images: Sequence[ResultImage], run_s: float
    ) -> tuple[str, ...]:
        """Store the files, then record rows, state, charge and cleared checkpoint in
        one transaction; files are written only when the call will take effect."""
        if job.id != attempt.job_id:
            raise ValueError(f"attempt of job {attempt.job_id!r} given job {job.id!r}")
        self._forget(attempt)
        jobs = self._db.jobs
        with _known(job.id):
            if await jobs.would_apply(job.id, attempt.number, attempt.token, "succeeded"):
                rows = await self._store(job.id, images)
                charge = self._charge(job, run_s)
                if await jobs.succeed_attempt(job.id, attempt.number, attempt.token, rows, charge):
                    return tuple(row.path for row in rows)
        return await self._recorded(attempt)

    async def failed(self, attempt: Attempt, reason: str) -> None:
        """Record the job failed with ``reason``."""
        self._forget(attempt)
        with _known(attempt.job_id):
            await self._db.jobs.end_attempt(
                attempt.job_id, attempt.number, attempt.token, "failed", reason
            )

    async def cancelled(self, attempt: Attempt) -> None:
        """Record the job cancelled."""
        self._forget(attempt)
        with _known(attempt.job_id):
            await self._db.jobs.end_attempt(
                attempt.job_id, attempt.number, attempt.token, "cancelled"
            )

    def _forget(self, attempt: Attempt) -> _Progress | None:
        """Drop (and return) the attempt's kept step, leaving another attempt's alone."""
        latest = self._progress.get(attempt.job_id)
        if latest is None or latest.token != attempt.token:
            return None
        return self._progress.pop(attempt.job_id)

    async def _store(self, job_id: str, images: Sequence[ResultImage]) -> list[ImageRow]:
        """Write each image's file (by content hash); its row, grid first."""
        rows = []
        for image in sorted(images, key=lambda image: image.index):
            stored = await self._images.write_async(image.png, ".png")
            rows.append(
                ImageRow(
                    job_id, image.index, str(stored.path), stored.sha256, image.width, image.height
                )
            )
        return rows

    async def _recorded(self, attempt: Attempt) -> tuple[str, ...]:
        """The paths this attempt's result was stored under; () if it recorded none."""
        if not await self._db.jobs.applied(attempt.job_id, attempt.token, "succeeded"):
            return ()
        return tuple(row.path for row in await self._db.images.list_for_job(attempt.job_id))

    def _charge(self, job: Job, run_s: float) -> UsageCharge:
        """The measured device time, in this month's fast or relax column."""
        month = usage_month(self._db.now_ms())
        relax = job.meta.get("speed") == "relax"
        return UsageCharge(
            job.user_id, month, fast_s=0.0 if relax else run_s, relax_s=run_s if relax else 0.0
        )


@contextlib.contextmanager
def _known(job_id: str) -> Iterator[None]:
    """Storage's missing row, as the ledger's error."""
    try:
        yield
    except NotFoundError as exc:
        if exc.kind != "job":
            raise
        raise UnknownJobError(job_id) from exc
