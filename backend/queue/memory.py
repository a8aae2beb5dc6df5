"""In-process queue: the embedded default for one process."""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from backend.clock import wall_ms
from backend.errors import QueueError
from backend.models import Job, Lane
from backend.queue.base import LANE_ORDER, Lease


@dataclass(slots=True)
class _Entry:
    job: Job
    attempt: int = 0
    checkpoint: bytes | None = None
    lease: Lease | None = None
    cancelled: bool = False


class MemoryQueue:
    """Lanes served in priority order, FIFO within a lane; leases expire and are reclaimed."""

    def __init__(self, *, now_ms: Callable[[], int] = wall_ms) -> None:
        self._now_ms = now_ms
        self._entries: dict[str, _Entry] = {}
        self._lanes: dict[Lane, deque[str]] = {lane: deque() for lane in LANE_ORDER}
        self._changed = asyncio.Condition()

    async def enqueue(self, job: Job) -> bool:
        if job.id in self._entries:
            return False
        self._entries[job.id] = _Entry(job)
        self._lanes[job.lane].append(job.id)
        await self._notify()
        return True

    async def claim(self, worker_id: str, *, lease_s: float, wait_s: float = 0.0) -> Lease | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        async with self._changed:
            while True:
                self._reclaim_expired()
                lease = self._take(worker_id, lease_s)
                remaining = deadline - loop.time()
                if lease is not None or remaining <= 0:
                    return lease
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    continue

    def _take(self, worker_id: str, lease_s: float) -> Lease | None:
        for lane in LANE_ORDER:
            ids = self._lanes[lane]
            if ids:
                entry = self._entries[ids.popleft()]
                entry.attempt += 1
                entry.lease = Lease(
                    job=entry.job,
                    worker_id=worker_id,
                    token=secrets.token_hex(8),
                    attempt=entry.attempt,
                    expires_at_ms=self._now_ms() + int(lease_s * 1000),
                    checkpoint=entry.checkpoint,
                )
                return entry.lease
        return None

    def _reclaim_expired(self) -> None:
        now = self._now_ms()
        for job_id, entry in self._entries.items():
            if entry.lease is not None and entry.lease.expires_at_ms <= now:
                entry.lease = None
                if entry.cancelled:
                    continue
                self._lanes[entry.job.lane].appendleft(job_id)
        for job_id in [j for j, e in self._entries.items() if e.cancelled and e.lease is None]:
            self._forget(job_id)

    def _held(self, lease: Lease) -> _Entry:
        entry = self._entries.get(lease.job.id)
        if entry is None or entry.lease is None or entry.lease.token != lease.token:
            raise QueueError(f"lease on job {lease.job.id} is no longer held by {lease.worker_id}")
        if entry.lease.expires_at_ms <= self._now_ms():
            raise QueueError(f"lease on job {lease.job.id} expired")
        return entry

    async def renew(self, lease: Lease, *, lease_s: float) -> Lease:
        entry = self._held(lease)
        entry.lease = replace(lease, expires_at_ms=self._now_ms() + int(lease_s * 1000))
        return entry.lease

    async def ack(self, lease: Lease) -> None:
        self._held(lease)
        self._forget(lease.job.id)

    async def requeue(self, lease: Lease, *, checkpoint: bytes | None = None) -> None:
        entry = self._held(lease)
        entry.lease = None
        if entry.cancelled:
            self._forget(lease.job.id)
            return
        entry.checkpoint = checkpoint
        self._lanes[entry.job.lane].appendleft(lease.job.id)
        await self._notify()

    async def cancel(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        if entry is None:
            return False
        if entry.lease is None:
            self._forget(job_id)
        else:
            entry.cancelled = True
        return True

    async def is_cancelled(self, job_id: str) -> bool:
        entry = self._entries.get(job_id)
        return entry is not None and entry.cancelled

    async def depth(self, lane: Lane | None = None) -> int:
        lanes = LANE_ORDER if lane is None else (lane,)
        return sum(len(self._lanes[one]) for one in lanes)

    async def position(self, job_id: str) -> int | None:
        entry = self._entries.get(job_id)
        if entry is None or entry.lease is not None:
            return None
        return list(self._lanes[entry.job.lane]).index(job_id)

    async def close(self) -> None:
        await self._notify()

    def _forget(self, job_id: str) -> None:
        entry = self._entries.pop(job_id, None)
        if entry is not None and job_id in self._lanes[entry.job.lane]:
            self._lanes[entry.job.lane].remove(job_id)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
