"""Load sampling: the meter's window, the watcher's passes and its task, and the level
shared between two backends on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backend.app import open_backend
from backend.degrade.ladder import Level, LoadSample, Transition
from backend.degrade.loadwatch import LoadMeter, LoadWatcher
from backend.degrade.memory import MemoryLevelStore
from backend.degrade.records import HostLoad
from backend.errors import QueueError
from backend.models import Job, JobSpec, Lane
from backend.queue.memory import MemoryQueue
from config.settings import Settings, load_settings
from storage.db import Database
from tests.backend.degrade.test_controller import controller_for
from tests.fakes import FakeClock


@dataclass
class FakeDevice:
    """A local worker as the watcher sees it."""

    busy: bool = False


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Database]:
    async with Database.open(tmp_path / "x.db", now_ms=clock.ms) as database:
        yield database


def _job(index: int) -> Job:
    spec = JobSpec(prompt=f"p {index}", seed=1, width=64, height=64)
    return Job(id=f"job-{index}", spec=spec, user_id=index, lane=Lane.REALTIME, cost_s=1.0)


def _fast_settings(**degrade: Any) -> Settings:
    """A ladder that moves a rung per sample on a short queue, sampled every 10 ms."""
    values = {
        "escalate_queue_len": 5,
        "relax_queue_len": 2,
        "escalate_after_s": 0,
        "relax_after_s": 0,
        "sample_interval_s": 0.01,
    }
    return load_settings(degrade={**values, **degrade})


async def _queued_row(db: Database, job_id: str) -> None:
    await db.jobs.insert(job_id, 7, "{}", "realtime")
    await db.jobs.mark_queued(job_id)


async def _wait_for(condition: asyncio.Event, timeout_s: float = 2.0) -> None:
    await asyncio.wait_for(condition.wait(), timeout_s)


# -- the meter -----------------------------------------------------------------------------


def test_load_meter_p95_over_the_window() -> None:
    """The p95 is the nearest-rank 95th percentile of the waits inside the window."""
    meter = LoadMeter(window_s=300)
    meter.record_wait(1000.0, now_s=0)
    for second in range(1, 101):
        meter.record_wait(float(second), now_s=300 + second)
    sample = meter.sample(queue_len=7, now_s=400)
    assert sample == LoadSample(queue_len=7, p95_wait_s=95.0, utilization=0.0)


def test_load_meter_counts_jobs_still_waiting() -> None:
    """Waits of queued jobs join the window's for that sample only: one long waiter
    among few starts sets the p95, and is not remembered by the next sample."""
    meter = LoadMeter(window_s=300)
    for _ in range(5):
        meter.record_wait(2.0, now_s=10)
    assert meter.sample(queue_len=1, now_s=20, waiting_s=[200.0]).p95_wait_s == 200.0
    assert meter.sample(queue_len=0, now_s=21).p95_wait_s == 2.0


def test_load_meter_utilization_is_the_mean_busy_over_the_window() -> None:
    """Utilization averages busy flags and fractions recorded within the window only."""
    meter = LoadMeter(window_s=60)
    meter.record_busy(False, now_s=0)
    meter.record_busy(True, now_s=70)
    meter.record_busy(True, now_s=80)
    meter.record_busy(0.5, now_s=90)
    meter.record_busy(False, now_s=100)
    assert meter.sample(queue_len=0, now_s=100).utilization == pytest.approx(0.625)


def test_load_meter_reads_an_empty_window_as_idle() -> None:
    """With nothing recorded in the window, wait and utilization read zero."""
    meter = LoadMeter(window_s=60)
    meter.record_wait(90.0, now_s=0)
    meter.record_busy(True, now_s=0)
    assert meter.sample(queue_len=3, now_s=61) == LoadSample(3, 0.0, 0.0)


# -- one pass ------------------------------------------------------------------------------


async def test_a_job_queued_for_200_s_reads_as_a_200_s_wait(db: Database, clock: FakeClock) -> None:
    """A queue holding one old job reads as a long p95 wait although nothing started."""
    controller = controller_for(load_settings(), db, clock.monotonic, MemoryLevelStore())
    watcher = LoadWatcher(controller, MemoryQueue(), db)
    await _queued_row(db, "old")
    clock.now_s += 200
    sample = await watcher.tick()
    assert sample.p95_wait_s == pytest.approx(200.0)


async def test_a_job_that_started_and_finished_between_samples_still_counts(
    db: Database, clock: FakeClock
) -> None:
    """The wait of a job seen neither queued nor running at a sample enters the window."""
    controller = controller_for(load_settings(), db, clock.monotonic, MemoryLevelStore())
    watcher = LoadWatcher(controller, MemoryQueue(), db)
    await watcher.tick()
    await _queued_row(db, "quick")
    clock.now_s += 90
    await db.jobs.mark_started("quick")
    await db.jobs.mark_finished("quick", "succeeded")
    clock.now_s += 5
    assert (await watcher.tick()).p95_wait_s == pytest.approx(90.0)
    clock.now_s += 5
    assert (await watcher.tick()).p95_wait_s == pytest.approx(90.0)


async def test_utilization_is_the_busy_fraction_of_the_local_devices(
    db: Database, clock: FakeClock
) -> None:
    """Polls of two devices, one busy throughout and one half the time, read as 0.75."""
    controller = controller_for(load_settings(), db, clock.monotonic, MemoryLevelStore())
    devices = [FakeDevice(busy=True), FakeDevice()]
    watcher = LoadWatcher(controller, MemoryQueue(), db, devices)
    watcher.poll_devices()
    devices[1].busy = True
    watcher.poll_devices()
    assert (await watcher.tick()).utilization == pytest.approx(0.75)


async def test_a_front_end_takes_the_utilization_of_the_hosts_with_devices(
    db: Database, clock: FakeClock
) -> None:
    """Without devices the utilization is the device-weighted mean of the live hosts."""
    store = MemoryLevelStore()
    controller = controller_for(load_settings(), db, clock.monotonic, store, "front")
    await store.publish("one-gpu", HostLoad(Level.NORMAL, LoadSample(0, 0.0, 1.0), 1), 15)
    await store.publish("three-gpus", HostLoad(Level.NORMAL, LoadSample(0, 0.0, 0.2), 3), 15)
    watcher = LoadWatcher(controller, MemoryQueue(), db)
    assert (await watcher.tick()).utilization == pytest.approx(0.4)
    assert (await store.hosts())["front"].devices == 0


# -- the task ------------------------------------------------------------------------------


async def test_the_watcher_escalates_from_the_queue_depth_and_relaxes(
    db: Database, clock: FakeClock
) -> None:
    """A deep memory queue takes the ladder to heavy, sample by sample; once the jobs
    are claimed it relaxes back to normal, every move reaching subscribers."""
    queue = MemoryQueue()
    for index in range(10):
        await queue.enqueue(_job(index))
    controller = controller_for(_fast_settings(), db, clock.monotonic, MemoryLevelStore())
    seen: list[Transition] = []
    heavy, normal = asyncio.Event(), asyncio.Event()

    def follow(transition: Transition) -> None:
        seen.append(transition)
        (heavy if transition.to_level is Level.HEAVY else normal).set()

    controller.subscribe(follow)
    async with LoadWatcher(controller, queue, db):
        await _wait_for(heavy)
        while await queue.claim("worker", lease_s=60) is not None:
            pass
        normal.clear()
        while controller.level is not Level.NORMAL:
            await _wait_for(normal)
            normal.clear()
    assert [t.to_level for t in seen] == [
        Level.LIGHT,
        Level.MEDIUM,
        Level.HEAVY,
        Level.MEDIUM,
        Level.LIGHT,
        Level.NORMAL,
    ]
    assert seen[0].reason.startswith("queue length 10 > 5")


class PublishWatchingStore(MemoryLevelStore):
    """A memory store that tells the test each time a load is published."""

    def __init__(self) -> None:
        super().__init__()
        self.published = asyncio.Event()

    async def publish(self, host_id: str, load: HostLoad, ttl_s: float) -> None:
        await super().publish(host_id, load, ttl_s)
        self.published.set()


async def test_the_watcher_survives_a_failing_sample(
    db: Database, clock: FakeClock, logs: list[MutableMapping[str, Any]]
) -> None:
    """A pass that raises is logged and the next pass runs and publishes as usual."""

    class FailingOnceQueue(MemoryQueue):
        """A memory queue whose first depth() fails, as a Redis hiccup would."""

        calls = 0

        async def depth(self, lane: Lane | None = None) -> int:
            self.calls += 1
            if self.calls == 1:
                raise QueueError("connection reset")
            return await super().depth(lane)

    queue, store = FailingOnceQueue(), PublishWatchingStore()
    controller = controller_for(_fast_settings(), db, clock.monotonic, store, "me")
    async with LoadWatcher(controller, queue, db):
        await _wait_for(store.published)
        assert queue.calls == 2 and "me" in await store.hosts()
    assert [entry["event"] for entry in logs].count("degrade_sample_failed") == 1


async def test_every_pass_catches_up_first_and_a_failed_catch_up_is_retried(
    db: Database, clock: FakeClock, logs: list[MutableMapping[str, Any]]
) -> None:
    """``catch_up`` runs at the start of each pass, before the pass publishes; one that
    fails ends its pass, is logged with it and runs again at the next pass."""
    store = PublishWatchingStore()
    published_before: list[bool] = []

    async def catch_up() -> None:
        published_before.append(store.published.is_set())
        if len(published_before) == 1:
            raise OSError("database is locked")

    controller = controller_for(_fast_settings(), db, clock.monotonic, store, "me")
    async with LoadWatcher(controller, MemoryQueue(), db, catch_up=catch_up):
        await _wait_for(store.published)
    assert published_before[:2] == [False, False]
    assert [entry["event"] for entry in logs].count("degrade_sample_failed") == 1


async def test_closing_stops_sampling_and_withdraws_the_host(
    db: Database, clock: FakeClock
) -> None:
    """After close no pass runs any more and this host's level no longer counts."""
    store = PublishWatchingStore()
    controller = controller_for(_fast_settings(), db, clock.monotonic, store, "me")
    async with LoadWatcher(controller, MemoryQueue(), db):
        await _wait_for(store.published)
    store.published.clear()
    assert await store.hosts() == {}
    await asyncio.sleep(0.05)
    assert not store.published.is_set() and await store.hosts() == {}


# -- two backends on one Redis -------------------------------------------------------------


async def test_an_override_reaches_another_backend_through_its_watcher(
    tmp_path: Path, redis_namespace: str
) -> None:
    """open_backend in Redis mode shares the override: a pin set on one backend reaches
    the other's subscribers within a few samples, with no call on that side."""

    def settings(name: str) -> Settings:
        return load_settings(
            data_dir=tmp_path / name,
            queue={"backend": "redis", "namespace": redis_namespace},
            degrade={"sample_interval_s": 0.02},
        )

    async with (
        open_backend(settings("a"), local_worker=False) as first,
        open_backend(settings("b"), local_worker=False) as second,
    ):
        pinned = asyncio.Event()
        second.degrade.subscribe(lambda transition: pinned.set())
        await first.degrade.set_override(Level.MEDIUM, 42)
        await _wait_for(pinned)
        assert second.degrade.level is Level.MEDIUM
        assert second.degrade.restrictions.claim_filter.exclude_tiers == frozenset({"free"})
