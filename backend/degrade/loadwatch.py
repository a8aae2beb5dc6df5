"""Measuring the load and feeding it to the degradation ladder.

:class:`LoadWatcher` owns the sampling task. Every ``degrade.sample_interval_s`` it
catches up with the other processes (their override and automatic levels), builds a
:class:`~backend.degrade.LoadSample`, feeds the controller and publishes this
process's level and load:

* queue length: the queued jobs of every lane, from the queue (shared in Redis mode);
* p95 wait: the nearest-rank p95 over the waits of the jobs that started within
  ``degrade.sample_window_s`` (from SQLite) together with the waits so far of the jobs
  still queued, so a queue that holds one job for 200 s reads as a long wait even when
  nothing starts (paused tiers, stalled devices);
* utilization: the fraction of the window this process's devices were busy, polled
  :data:`BUSY_POLLS` times per interval. A process without devices (a front end) takes
  the device-weighted mean of the live processes that have some, else reads idle.

A failed pass is logged and the next one runs as usual: sampling never stops the service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import structlog

from backend.clock import monotonic_s
from backend.degrade.controller import DegradeController
from backend.degrade.ladder import LoadSample
from backend.degrade.records import HostLoad
from backend.tasks import settle, stop

if TYPE_CHECKING:
    from backend.queue.base import JobQueue
    from storage.db import Database
    from storage.repos.jobs import WaitCursor

__all__ = [
    "BUSY_POLLS",
    "CLOSE_TIMEOUT_S",
    "Device",
    "LoadMeter",
    "LoadWatcher",
    "shared_utilization",
]

log = structlog.get_logger(__name__)

# Busy checks per sampling interval: a device's busy flag is cheap to read, and more
# checks resolve jobs shorter than the interval.
BUSY_POLLS = 5
# How long closing waits for a pass under way before cancelling it.
CLOSE_TIMEOUT_S = 5.0
P95_PERCENT = 95


class Device(Protocol):
    """What the watcher reads of a local worker."""

    @property
    def busy(self) -> bool:
        """Whether the device is running a job now."""
        ...


class LoadMeter:
    """Raw observations over a sliding window, read out as a :class:`LoadSample`.

    Feed ``record_wait`` at every job start (how long it queued) and ``record_busy``
    at every device poll (busy or not, or the fraction of the devices that were).
    """

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.window_s = window_s
        self._waits: deque[tuple[float, float]] = deque()
        self._busy: deque[tuple[float, float]] = deque()

    def record_wait(self, wait_s: float, now_s: float) -> None:
        """A job started at ``now_s`` after queuing ``wait_s``."""
        self._waits.append((now_s, max(0.0, wait_s)))
        self._prune(now_s)

    def record_busy(self, busy: bool | float, now_s: float) -> None:
        """A device poll at ``now_s``: busy or not, or the busy fraction of several."""
        self._busy.append((now_s, min(1.0, max(0.0, float(busy)))))
        self._prune(now_s)

    def sample(self, queue_len: int, now_s: float, waiting_s: Iterable[float] = ()) -> LoadSample:
        """The load now; ``waiting_s``, the waits so far of jobs still queued, join the
        window's waits for this sample only. An empty window reads as no wait and idle."""
        self._prune(now_s)
        return LoadSample(queue_len, self.p95_wait_s(waiting_s), self.utilization())

    def p95_wait_s(self, waiting_s: Iterable[float] = ()) -> float:
        """Nearest-rank p95 of the waits in the window and ``waiting_s`` (0 when none)."""
        waits = sorted([*(wait for _, wait in self._waits), *(max(0.0, w) for w in waiting_s)])
        if not waits:
            return 0.0
        # ceil(0.95 * n) in integers: the float product can land a hair above a whole number.
        rank = (P95_PERCENT * len(waits) + 99) // 100
        return waits[rank - 1]

    def utilization(self) -> float:
        """The mean of the busy polls in the window (0 when none)."""
        if not self._busy:
            return 0.0
        return sum(busy for _, busy in self._busy) / len(self._busy)

    def _prune(self, now_s: float) -> None:
        oldest_s = now_s - self.window_s
        for entries in (self._waits, self._busy):
            while entries and entries[0][0] < oldest_s:
                entries.popleft()


def shared_utilization(hosts: Mapping[str, HostLoad]) -> float:
    """The device-weighted mean utilization of the processes that have devices (0: none)."""
    devices = sum(load.devices for load in hosts.values() if load.devices > 0)
    if not devices:
        return 0.0
    busy = sum(
        load.sample.utilization * load.devices for load in hosts.values() if load.devices > 0
    )
    return busy / devices


class LoadWatcher:
    """Samples the load and feeds the controller; an async context manager.

    ``devices`` is read at every poll, so a list that workers join later may be passed.
    ``catch_up`` runs at the start of every pass (a failure is logged like any other of
    the pass, which is tried again at the next).
    """

    def __init__(
        self,
        controller: DegradeController,
        queue: JobQueue,
        db: Database,
        devices: Sequence[Device] = (),
        *,
        now_s: Callable[[], float] = monotonic_s,
        catch_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        settings = controller.settings
        self.interval_s = settings.sample_interval_s
        self._controller = controller
        self._queue = queue
        self._db = db
        self._devices = devices
        self._now_s = now_s
        self._catch_up = catch_up
        self._meter = LoadMeter(settings.sample_window_s)
        self._cursor: WaitCursor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> LoadWatcher:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start sampling every :attr:`interval_s` (again after a close); idempotent."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="degrade-load-watcher")

    async def close(self) -> None:
        """Let a pass under way finish (cancelled after :data:`CLOSE_TIMEOUT_S`), then
        withdraw this process's shared level so that it stops counting at once."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        if await settle({task}, CLOSE_TIMEOUT_S):
            await stop({task}, CLOSE_TIMEOUT_S)
        try:
            await asyncio.shield(self._controller.withdraw())
        except Exception:
            # Its entry expires by itself within a few intervals.
            log.warning("degrade_withdraw_failed", exc_info=True)

    def poll_devices(self) -> None:
        """Record which fraction of this process's devices is busy now."""
        if self._devices:
            busy = sum(device.busy for device in self._devices) / len(self._devices)
            self._meter.record_busy(busy, self._now_s())

    async def tick(self) -> LoadSample:
        """One pass: catch up with the other processes (the level, and ``catch_up``:
        what else they share, such as lane pauses), measure, feed the ladder, publish."""
        if self._catch_up is not None:
            await self._catch_up()
        hosts = await self._controller.pull()
        waits = await self._db.jobs.queue_waits(self._cursor)
        queue_len = await self._queue.depth()
        self._cursor = waits.cursor
        now_s = self._now_s()
        for wait_ms in waits.started_ms:
            self._meter.record_wait(wait_ms / 1000, now_s)
        waiting_s = [wait_ms / 1000 for wait_ms in waits.waiting_ms]
        sample = self._meter.sample(queue_len, now_s, waiting_s)
        if not self._devices:
            others = {
                host: load for host, load in hosts.items() if host != self._controller.host_id
            }
            sample = replace(sample, utilization=shared_utilization(others))
        self._controller.observe(sample)
        await self._controller.push(sample, len(self._devices))
        log.debug(
            "load_sampled",
            queue_len=sample.queue_len,
            p95_wait_s=round(sample.p95_wait_s, 1),
            utilization=round(sample.utilization, 3),
            degrade_level=self._controller.level.value,
        )
        return sample

    async def _run(self) -> None:
        polls = 0
        while not await self._stopped_within(self.interval_s / BUSY_POLLS):
            polls += 1
            try:
                self.poll_devices()
                if polls % BUSY_POLLS == 0:
                    await self.tick()
            except Exception:
                # The next pass may well succeed (Redis back, database unlocked).
                log.exception("degrade_sample_failed")

    async def _stopped_within(self, timeout_s: float) -> bool:
        # An event rather than cancellation alone: a client library that swallows a
        # cancellation mid-command must not keep the loop alive.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout_s)
        return self._stopping.is_set()
