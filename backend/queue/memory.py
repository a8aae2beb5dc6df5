"""In-process queue: the embedded default for one process."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

from backend.clock import wall_ms
from backend.errors import LeaseLostError
from backend.models import Job, Lane
from backend.queue.base import Head, Lease, LostBecause
from backend.scheduling.fairness import EVERYTHING, AgingPolicy, ClaimFilter, FairQueue, Ticket
from config.settings import SchedulerSettings

DEFAULT_AGING = AgingPolicy.from_settings(SchedulerSettings())


@dataclass(slots=True)
class _Entry:
    job: Job
    ticket: Ticket
    attempt: int = 0
    checkpoint: bytes | None = None
    lease: Lease | None = None  # the live lease; None while queued
    # The token of the latest claim: its lease may still ack or requeue after it
    # expired, even once reclaimed, until the next claim replaces it.
    token: str | None = None
    cancelled: bool = False
    order: int = 0  # enqueue order: expired leases come back in it
    paused: bool = False  # paused in place: not counted against the user's cap


def ticket_for(job: Job) -> Ticket:
    """What fair queuing needs to know about a job."""
    return Ticket(
        job_id=job.id,
        lane=job.lane,
        user=str(job.user_id),
        tier=job.tier,
        cost_s=job.cost_s,
        weight=job.weight,
        max_running=job.max_running,
    )


class MemoryQueue:
    """Fair order from :class:`FairQueue`; leases expire and are reclaimed lazily, by
    the next claim or peek (a heap of expiries finds them)."""

    def __init__(
        self, *, aging: AgingPolicy = DEFAULT_AGING, now_ms: Callable[[], int] = wall_ms
    ) -> None:
        self._now_ms = now_ms
        self._fair = FairQueue(aging)
        self._entries: dict[str, _Entry] = {}
        # (expires_at_ms, job id) of every lease granted or renewed; stale items (the
        # lease was renewed, acked or given back) are skipped when they come up.
        self._expiries: list[tuple[int, str]] = []
        self._order = itertools.count()
        self._changed = asyncio.Condition()

    async def enqueue(self, job: Job) -> bool:
        """Queue ``job``; False (and no change) if a job with its id is already known."""
        if job.id in self._entries:
            return False
        ticket = self._fair.push(ticket_for(job), self._now_ms())
        self._entries[job.id] = _Entry(job, ticket, order=next(self._order))
        await self._notify()
        return True

    async def claim(
        self,
        worker_id: str,
        *,
        lease_s: float,
        wait_s: float = 0.0,
        allow: ClaimFilter = EVERYTHING,
    ) -> Lease | None:
        """Lease the next job in fair order that ``allow`` permits, waiting up to ``wait_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with self._changed:
            while True:
                self._reclaim_expired()
                lease = self._take(worker_id, lease_s, allow)
                remaining = deadline - loop.time()
                if lease is not None or remaining <= 0:
                    return lease
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    continue

    def _take(self, worker_id: str, lease_s: float, allow: ClaimFilter) -> Lease | None:
        ticket = self._fair.pop(self._now_ms(), allow)
        if ticket is None:
            return None
        entry = self._entries[ticket.job_id]
        entry.attempt += 1
        entry.token = secrets.token_hex(8)
        entry.lease = Lease(
            job=entry.job,
            worker_id=worker_id,
            token=entry.token,
            attempt=entry.attempt,
            expires_at_ms=self._now_ms() + int(lease_s * 1000),
            checkpoint=entry.checkpoint,
        )
        heapq.heappush(self._expiries, (entry.lease.expires_at_ms, entry.job.id))
        return entry.lease

    async def peek(self, allow: ClaimFilter = EVERYTHING) -> Head | None:
        """The job :meth:`claim` would take now, left queued."""
        self._reclaim_expired()
        now = self._now_ms()
        ticket = self._fair.peek(now, allow)
        if ticket is None:
            return None
        return Head(self._entries[ticket.job_id].job, ticket.is_aged(self._fair.aging, now))

    def _reclaim_expired(self) -> None:
        now = self._now_ms()
        expired: list[_Entry] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, job_id = heapq.heappop(self._expiries)
            entry = self._entries.get(job_id)
            lease = entry.lease if entry is not None else None
            if entry is not None and lease is not None and lease.expires_at_ms <= now:
                expired.append(entry)
        expired = list({id(entry): entry for entry in expired}.values())
        for entry in sorted(expired, key=lambda e: e.order):
            job_id = entry.job.id
            if entry.lease is not None:
                entry.lease = None
                self._unpause(entry)
                if entry.cancelled:
                    self._fair.release(entry.ticket)
                    self._entries.pop(job_id)
                else:
                    self._fair.restore(entry.ticket)

    def _holder(self, lease: Lease) -> _Entry | None:
        """The job's entry if ``lease`` may still act on it; None if the queue no
        longer has the job; LeaseLostError if a later claim (or enqueue) superseded it."""
        entry = self._entries.get(lease.job.id)
        if entry is not None and entry.token != lease.token:
            raise LeaseLostError(lease.job.id, lease.worker_id, LostBecause.SUPERSEDED)
        return entry

    async def renew(self, lease: Lease, *, lease_s: float) -> Lease:
        """Extend a lease to ``lease_s`` from now, also an expired one nobody reclaimed;
        LeaseLostError once it was reclaimed or superseded, or the job is gone."""
        entry = self._holder(lease)
        if entry is None:
            raise LeaseLostError(lease.job.id, lease.worker_id, LostBecause.UNKNOWN)
        if entry.lease is None:
            raise LeaseLostError(lease.job.id, lease.worker_id, LostBecause.RECLAIMED)
        entry.lease = replace(lease, expires_at_ms=self._now_ms() + int(lease_s * 1000))
        heapq.heappush(self._expiries, (entry.lease.expires_at_ms, entry.job.id))
        return entry.lease

    async def ack(self, lease: Lease) -> None:
        """Forget a finished job, also after its lease expired; LeaseLostError if another
        claim superseded the lease. A job already gone stays gone."""
        entry = self._holder(lease)
        if entry is None:
            return
        if entry.lease is None:  # reclaimed, and nobody claimed it since
            self._fair.remove(entry.job.id)
        else:
            self._unpause(entry)
            self._fair.release(entry.ticket)
        del self._entries[entry.job.id]
        await self._notify()  # the user may be under their running cap again

    async def requeue(self, lease: Lease, *, checkpoint: bytes | None = None) -> None:
        """Queue a leased job again with ``checkpoint``; a cancelled one is dropped
        instead, a reclaimed one only takes the checkpoint. LeaseLostError if another
        claim superseded the lease or the job is gone."""
        entry = self._holder(lease)
        if entry is None:
            raise LeaseLostError(lease.job.id, lease.worker_id, LostBecause.UNKNOWN)
        if entry.lease is None:  # reclaimed: it waits in its place already
            entry.checkpoint = checkpoint
            return
        entry.lease = None
        self._unpause(entry)
        if entry.cancelled:
            self._fair.release(entry.ticket)
            del self._entries[lease.job.id]
            return
        entry.checkpoint = checkpoint
        self._fair.restore(entry.ticket, waited_since_ms=self._now_ms())
        await self._notify()

    async def set_paused(self, lease: Lease, paused: bool) -> None:
        """Count a leased job out of (or back into) its user's running cap while it is
        paused in place; ignored once the lease no longer holds the job."""
        try:
            entry = self._holder(lease)
        except LeaseLostError:
            return
        if entry is None or entry.lease is None or entry.paused == paused:
            return
        entry.paused = paused
        if paused:
            self._fair.suspend(entry.ticket)
            await self._notify()  # the user may be under their running cap now
        else:
            self._fair.unsuspend(entry.ticket)

    def _unpause(self, entry: _Entry) -> None:
        """Count a job that leaves its lease while paused as running again, so that
        releasing it balances."""
        if entry.paused:
            entry.paused = False
            self._fair.unsuspend(entry.ticket)

    async def cancel(self, job_id: str) -> bool:
        """Drop a queued job or flag a leased one to stop; True if the job was known."""
        entry = self._entries.get(job_id)
        if entry is None:
            return False
        if entry.lease is None:
            self._fair.remove(job_id)
            del self._entries[job_id]
        else:
            entry.cancelled = True
        return True

    async def is_cancelled(self, job_id: str) -> bool:
        """Whether the job was flagged to stop while leased."""
        entry = self._entries.get(job_id)
        return entry is not None and entry.cancelled

    async def depth(self, lane: Lane | None = None) -> int:
        """Number of queued (not leased) jobs, in ``lane`` or in all lanes."""
        return self._fair.depth(lane)

    async def position(self, job_id: str) -> int | None:
        """0-based place of a queued job in its lane's fair order; None if not queued."""
        return self._fair.position(job_id)

    async def queued_cost_s(self, lane: Lane | None = None) -> float:
        """Estimated device-seconds of the queued jobs, in ``lane`` or in all lanes."""
        return sum(ticket.cost_s for ticket in self._fair.queued(lane))

    async def close(self) -> None:
        """Wake the waiting claims; the jobs live as long as this object."""
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
