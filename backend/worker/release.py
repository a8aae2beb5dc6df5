"""Giving leases back to the queue (an ack, or a requeue with a checkpoint) in the
background, so that a queue that is away never holds up the device's events.

A release that fails for a reason that may pass is retried, for up to a lease; after
that the lease lapses and the queue hands the job out again, and the ledger decides
whether it runs (a finished job does not). A refusal (``LeaseLostError``) means another
claim holds the job: it keeps it, and nothing is retried; or that the queue forgot the
job (Redis restarted empty): a requeue then queues it anew.
"""

from __future__ import annotations

import asyncio

import structlog

from backend.errors import LeaseLostError, QueueError
from backend.queue.base import JobQueue, Lease, LostBecause
from backend.tasks import settle

log = structlog.get_logger(__name__)

# A queue call that has not answered after this is treated as failed; whether it took
# effect stays unknown.
QUEUE_CALL_S = 5.0
# A failed release is retried after this, doubling, up to the cap.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


class Releases:
    """The releases one worker has under way; it owns their tasks."""

    def __init__(self, queue: JobQueue, lease_s: float) -> None:
        self._queue = queue
        self._lease_s = lease_s
        self.tasks: set[asyncio.Task[None]] = set()

    def ack(self, lease: Lease) -> None:
        """Let the queue forget the job (finished, failed or cancelled for good)."""
        self._start(lease, requeue=False, checkpoint=None)

    def requeue(self, lease: Lease, checkpoint: bytes | None) -> None:
        """Give the job back to the queue with ``checkpoint`` to resume from."""
        self._start(lease, requeue=True, checkpoint=checkpoint)

    async def settle(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the releases under way to end by themselves."""
        await settle(self.tasks, timeout_s)

    def _start(self, lease: Lease, *, requeue: bool, checkpoint: bytes | None) -> None:
        task = asyncio.create_task(
            self._give_back(lease, requeue, checkpoint), name=f"release-{lease.job.id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _give_back(self, lease: Lease, requeue: bool, checkpoint: bytes | None) -> None:
        action = "requeue" if requeue else "ack"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease_s
        delay_s = RETRY_FIRST_S
        while True:
            try:
                async with asyncio.timeout(QUEUE_CALL_S):
                    if requeue:
                        await self._queue.requeue(lease, checkpoint=checkpoint)
                    else:
                        await self._queue.ack(lease)
                return
            except LeaseLostError as exc:
                if requeue and exc.reason == LostBecause.UNKNOWN:
                    await self._enqueue_again(lease)
                    return
                log.info("release_refused", job_id=lease.job.id, action=action, error=str(exc))
                return
            except (QueueError, TimeoutError) as exc:
                if loop.time() + delay_s >= deadline:
                    error = str(exc) or type(exc).__name__
                    log.warning(
                        "release_abandoned", job_id=lease.job.id, action=action, error=error
                    )
                    return
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)

    async def _enqueue_again(self, lease: Lease) -> None:
        """The queue forgot the job (Redis restarted empty, or was flushed): queue it
        anew. Its checkpoint is in the ledger, where the next claim finds it; if another
        process queued it again first, this changes nothing."""
        job = lease.job
        try:
            async with asyncio.timeout(QUEUE_CALL_S):
                added = await self._queue.enqueue(job)
        except (QueueError, TimeoutError) as exc:
            # Left to start-up reconciliation, which queues what SQLite holds.
            log.warning(
                "requeue_lost_job_failed", job_id=job.id, error=str(exc) or type(exc).__name__
            )
            return
        log.warning("job_queued_again", job_id=job.id, added=added)
