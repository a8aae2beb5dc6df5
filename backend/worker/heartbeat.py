"""Renewing the leases a worker holds, each on its :class:`~backend.worker.leases.LeaseTimer`.

A renewal the queue refuses because another claim holds the job (``LeaseLostError``)
stops the job at once. Any other failure (the queue unreachable, a timeout, a refusal
that does not say the lease is lost) is retried while the lease lasts; once it has
lapsed, the job is given up. A cancellation flagged in the queue is picked up after
each renewal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from backend.errors import LeaseLostError, QueueError
from backend.queue.base import JobQueue
from backend.worker.flight import Flight
from backend.worker.leases import renew_every_s
from backend.worker.release import QUEUE_CALL_S

log = structlog.get_logger(__name__)

# The heartbeat looks for due renewals at least this often.
TICK_S = 0.25

# What to do with a job whose lease another claim holds, or whose lease lapsed: called
# with its id and the last error.
LeaseCallback = Callable[[str, Exception], None]


class Heartbeat:
    """Keeps the leases of ``flights`` (the worker's own mapping, read live)."""

    def __init__(
        self,
        queue: JobQueue,
        lease_s: float,
        flights: Mapping[str, Flight],
        *,
        lost: LeaseCallback,
        lapsed: LeaseCallback,
        cancelled: Callable[[str], object],
    ) -> None:
        self._queue = queue
        self._lease_s = lease_s
        self._flights = flights
        self._lost = lost
        self._lapsed = lapsed
        self._cancelled = cancelled

    async def run(self, closed: asyncio.Event) -> None:
        """Renew each lease when it is due, until ``closed`` is set."""
        tick_s = min(renew_every_s(self._lease_s) / 2, TICK_S)
        while not closed.is_set():
            await asyncio.sleep(tick_s)
            now_s = time.monotonic()
            due = [(job_id, f) for job_id, f in self._flights.items() if f.timer.is_due(now_s)]
            if due:
                await asyncio.gather(*(self._keep(job_id, flight) for job_id, flight in due))

    async def _keep(self, job_id: str, flight: Flight) -> None:
        """Renew one lease; never raises."""
        sent_s = time.monotonic()
        try:
            async with asyncio.timeout(flight.timer.call_timeout_s(sent_s)):
                lease = await self._queue.renew(flight.lease, lease_s=self._lease_s)
        except LeaseLostError as exc:
            if self._holds(job_id, flight):
                flight.timer.stop()
                self._lost(job_id, exc)
            return
        except (QueueError, TimeoutError) as exc:
            self._failed(job_id, flight, exc)
            return
        except Exception as exc:
            log.exception("lease_renewal_crashed", job_id=job_id)
            self._failed(job_id, flight, exc)
            return
        if self._holds(job_id, flight):
            flight.lease = lease
            flight.timer.renewed(sent_s)
            await self._check_cancelled(job_id, flight)

    def _failed(self, job_id: str, flight: Flight, exc: Exception) -> None:
        if not self._holds(job_id, flight):
            return
        now_s = time.monotonic()
        timer = flight.timer
        if timer.failed(now_s):
            log.warning(
                "lease_renewal_failed",
                job_id=job_id,
                error=str(exc) or type(exc).__name__,
                failures=timer.failures,
                lease_left_s=round(timer.remaining_s(now_s), 3),
            )
            return
        self._lapsed(job_id, exc)

    async def _check_cancelled(self, job_id: str, flight: Flight) -> None:
        try:
            async with asyncio.timeout(min(QUEUE_CALL_S, renew_every_s(self._lease_s))):
                cancelled = await self._queue.is_cancelled(job_id)
        except (QueueError, TimeoutError):
            return  # asked again with the next renewal
        if cancelled and not flight.stopping and self._holds(job_id, flight):
            self._cancelled(job_id)

    def _holds(self, job_id: str, flight: Flight) -> bool:
        """Whether ``flight`` is still the worker's (it did not land meanwhile)."""
        return self._flights.get(job_id) is flight
