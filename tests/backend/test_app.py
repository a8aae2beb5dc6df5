"""open_backend: one memory-queue process per data directory, Redis checked before
anything is written, queued jobs Redis lost queued again, and a stop that saves running
jobs at once when interrupted; in process and on real ``imagine`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.app import Backend, QueueWatchdog, _joins, open_backend
from backend.errors import BadInputError
from backend.events.base import EventKind
from backend.models import JobSpec
from backend.queue import RedisQueue
from backend.scheduling.lanes import CostModel, StepModel
from config.settings import Settings, load_settings
from tests.backend.worker.conftest import eventually
from tests.redis_server import PrivateRedis, free_port

# Bounds that detect a hang on two busy cores, never performance figures.
START_BOUND_S = 90.0
STOP_BOUND_S = 10.0  # the default drain alone is 30 s
REFUSAL_BOUND_S = 30.0
# How often the queue is checked in the tests of Redis losing its data.
WATCH_INTERVAL_S = 0.2

LONG_SPEC = JobSpec(prompt="a long job", seed=1, width=64, height=64, n=1, steps=1000)


@pytest.fixture
def fast_env(engine_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`engine_env` with 64x64 images, long jobs allowed and one torch thread per
    child process (this process's threads are left alone); returns the data directory."""
    monkeypatch.setenv("IMAGINE_PROMPT__PIXEL_BUDGET", str(64 * 64))
    monkeypatch.setenv("IMAGINE_PROMPT__MAX_STEPS", "1000")
    return engine_env


def _jobs(data_dir: Path) -> list[tuple[str, str, int, bool]]:
    """Every job's id, state, attempts and whether SQLite keeps a checkpoint for it."""
    with contextlib.closing(sqlite3.connect(data_dir / "imagine.db")) as db:
        rows = db.execute("SELECT id, state, attempts, checkpoint IS NOT NULL FROM jobs")
        return [(job_id, state, attempts, bool(saved)) for job_id, state, attempts, saved in rows]


# -- one memory-queue process per data directory --------------------------------------------


async def test_a_second_embedded_backend_is_refused_before_touching_anything(
    fast_env: Path,
) -> None:
    """While a memory-queue backend runs, another on its data directory is refused with
    one line naming this process and Redis mode, and reconciles nothing: the first one's
    queued job stays as it was."""
    settings = load_settings()
    async with open_backend(settings, local_worker=False) as first:
        job_id = first.service.new_job_id()
        await first.service.submit(LONG_SPEC, user_id=1, job_id=job_id)
        with pytest.raises(BadInputError) as refused:
            async with open_backend(settings, local_worker=False):
                pytest.fail("a second backend opened the data directory")
        row = await first.db.jobs.get(job_id)
        assert row is not None and row.state == "queued" and row.attempts == 0
        assert await first.queue.depth() == 1
    message = str(refused.value)
    assert f"in use by pid {os.getpid()}" in message and 'queue.backend = "redis"' in message
    assert "\n" not in message


async def test_redis_and_memory_backends_exclude_each_other(fast_env: Path) -> None:
    """A Redis-queue backend does not start beside a memory-queue one on the same data
    directory (it would take that one's running jobs for orphans)."""
    redis = load_settings(queue={"backend": "redis", "namespace": f"test-app-{os.getpid()}"})
    async with open_backend(load_settings(), local_worker=False):
        with pytest.raises(BadInputError, match="memory queue"):
            async with open_backend(redis, local_worker=False):
                pytest.fail("a Redis backend opened a memory backend's data directory")


def _generate(prompt: str, stderr: Path, *, user_id: int = 0) -> subprocess.Popen[str]:
    """``imagine generate`` in a child process, one torch thread, stderr to a file."""
    with stderr.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "generate", prompt, "--user-id", str(user_id)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
            env={**os.environ, "IMAGINE_ENGINE__TORCH_THREADS": "1"},
        )


def _wait_for(process: subprocess.Popen[str], stderr: Path, text: str) -> None:
    deadline = time.monotonic() + START_BOUND_S
    while text not in stderr.read_text():
        assert process.poll() is None, f"exited {process.returncode}:\n{stderr.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in {START_BOUND_S} s"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.chaos
def test_a_second_generate_on_a_busy_data_dir_exits_2_and_the_first_finishes_once(
    fast_env: Path, tmp_path: Path
) -> None:
    """`imagine generate` beside a running one on the same data directory exits 2 at
    once with one line naming the first; the first's job runs once and is charged once."""
    first_log = tmp_path / "first.err"
    first = _generate("a lighthouse --steps 300 --n 1 --seed 5", first_log, user_id=1)
    try:
        _wait_for(first, first_log, '"job_started"')
        second = subprocess.run(
            [sys.executable, "-m", "cli", "generate", "a boat --steps 2 --n 1", "--user-id", "2"],
            capture_output=True,
            text=True,
            timeout=REFUSAL_BOUND_S,
        )
        assert first.poll() is None, "the first run ended before the second was refused"
        assert first.wait(START_BOUND_S) == 0, first_log.read_text()
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"imagine: error: data directory {fast_env} is in use by pid ")
    assert f"pid {first.pid} (python -m cli generate, since " in line and "redis" in line
    assert [job[1:] for job in _jobs(fast_env)] == [("succeeded", 1, False)]
    with contextlib.closing(sqlite3.connect(fast_env / "imagine.db")) as db:
        assert db.execute("SELECT user_id, jobs FROM usage").fetchall() == [(1, 1)]


# -- Redis unreachable at start-up ------------------------------------------------------------


def test_unreachable_redis_exits_2_before_torch_or_any_write(fast_env: Path) -> None:
    """With nothing listening at queue.redis_url, `imagine generate` exits 2 with one
    line naming the URL, password masked, before torch is imported or the data
    directory is created."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cli", "generate", "a cat"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IMAGINE_QUEUE__BACKEND": "redis", "IMAGINE_QUEUE__REDIS_URL": url},
    )
    imports = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("imagine: error: ") and "queue.redis_url=redis://" in lines[0]
    assert "hunter2" not in result.stderr and "@127.0.0.1:" in lines[0]
    assert imports and not [line for line in imports if line.split("|")[-1].strip() == "torch"]
    assert not fast_env.exists()


# -- Redis losing its data while the backend runs ---------------------------------------------


def _watched(server: PrivateRedis) -> Settings:
    """Redis mode on ``server``, its queue checked every :data:`WATCH_INTERVAL_S`."""
    queue = {"backend": "redis", "redis_url": server.url, "namespace": "watched"}
    return load_settings(queue={**queue, "reconcile_interval_s": WATCH_INTERVAL_S})


async def _queued_again(backend: Backend, job_id: str) -> None:
    """Return once the queue knows ``job_id`` as queued again; TimeoutError (a hang)
    after a bound."""

    async def queued() -> bool:
        return await backend.queue.position(job_id) is not None

    await eventually(queued)


async def test_a_queued_job_redis_loses_is_queued_again_once(
    fast_env: Path, private_redis: PrivateRedis
) -> None:
    """Redis flushed while a job waits unclaimed: within a few checks the queue holds
    it again, once, and SQLite still shows it queued once."""
    settings = _watched(private_redis)
    async with open_backend(settings, local_worker=False) as backend:
        job = await backend.service.submit(LONG_SPEC, user_id=1)
        assert await backend.queue.position(job.id) == 0
        assert private_redis.command("FLUSHALL").startswith(b"+OK")
        await _queued_again(backend, job.id)
        assert await backend.queue.depth() == 1
    assert _jobs(settings.data_dir) == [(job.id, "queued", 0, False)]


async def test_checks_go_on_through_an_outage_and_see_an_empty_restart(
    fast_env: Path, private_redis: PrivateRedis, logs: list[MutableMapping[str, Any]]
) -> None:
    """Redis down for several checks (each logged, none ending the watch), then back
    empty: the loss is logged as a warning and the waiting job is queued again."""
    settings = _watched(private_redis)
    async with open_backend(settings, local_worker=False) as backend:
        job = await backend.service.submit(LONG_SPEC, user_id=1)
        private_redis.stop(keep_data=False)
        await eventually(
            lambda: sum(entry["event"] == "queue_watch_unavailable" for entry in logs) >= 3
        )
        private_redis.start()
        await _queued_again(backend, job.id)
    lost = [entry for entry in logs if entry["event"] == "queue_data_lost"]
    assert [entry["log_level"] for entry in lost] == ["warning"]


async def test_a_running_job_redis_loses_is_left_to_its_worker(
    fast_env: Path, private_redis: PrivateRedis
) -> None:
    """Redis flushed while a job runs on another process's worker and another waits:
    the waiting one is queued again, the running one is not (its worker queues it anew
    at its next renewal, with its latest checkpoint; a second copy would race it)."""
    settings = _watched(private_redis)
    async with open_backend(settings, local_worker=False) as backend:
        running = await backend.service.submit(LONG_SPEC, user_id=1)
        lease = await backend.queue.claim("elsewhere", lease_s=60)
        assert lease is not None and lease.job.id == running.id
        assert await backend.db.jobs.claim_attempt(running.id, lease.attempt, lease.token)
        waiting = await backend.service.submit(LONG_SPEC, user_id=2)
        assert private_redis.command("FLUSHALL").startswith(b"+OK")
        # One reconcile queues both in submission order, if it queues the running one.
        await _queued_again(backend, waiting.id)
        assert await backend.queue.depth() == 1
        assert await backend.queue.position(running.id) is None
    states = {job_id: state for job_id, state, *_ in _jobs(settings.data_dir)}
    assert states == {running.id: "running", waiting.id: "queued"}


class _FlakyService:
    """A service whose first reconcile fails (the database locked, say)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def reconcile(self, *, running: bool = True) -> int:
        self.calls.append(running)
        if len(self.calls) == 1:
            raise RuntimeError("database is locked")
        return 0


async def test_a_failed_reconcile_is_run_again_until_it_completes(
    redis_client: Redis, redis_namespace: str, logs: list[MutableMapping[str, Any]]
) -> None:
    """After a loss, a reconcile that fails is logged and run again at a later check,
    running jobs left out each time; once one completes, later checks run none."""
    queue = RedisQueue(redis_client, namespace=redis_namespace)
    service = _FlakyService()
    async with QueueWatchdog(queue, service, WATCH_INTERVAL_S):  # type: ignore[arg-type]
        await redis_client.delete(queue.key("epoch"))
        await eventually(lambda: len(service.calls) >= 2)
        await asyncio.sleep(3 * WATCH_INTERVAL_S)
    assert service.calls == [False, False]
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "queue_watch_failed"
    ]


# -- stopping ------------------------------------------------------------------------------------


async def _started(backend: Backend) -> str:
    """Submit the long job and return its id once it has taken a step."""
    job_id = backend.service.new_job_id()
    subscription = backend.service.follow(job_id)
    await backend.service.submit(LONG_SPEC, user_id=1, job_id=job_id)
    async with asyncio.timeout(START_BOUND_S):
        async for event in subscription:
            if event.kind is EventKind.STEP:
                break
    subscription.close()
    return job_id


@pytest.mark.slow
async def test_a_cancelled_owner_saves_running_jobs_at_once(fast_env: Path) -> None:
    """Leaving open_backend by cancellation (a signal's way out) gives running jobs no
    drain: the job is checkpointed and requeued at its next step, within seconds."""
    settings = load_settings()
    started: asyncio.Queue[str] = asyncio.Queue()

    async def owner() -> None:
        async with open_backend(settings) as backend:
            await started.put(await _started(backend))
            await asyncio.sleep(3600)

    task = asyncio.create_task(owner())
    job_id = await asyncio.wait_for(started.get(), START_BOUND_S)
    task.cancel()
    async with asyncio.timeout(STOP_BOUND_S):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _jobs(settings.data_dir) == [(job_id, "queued", 1, True)]


@pytest.mark.slow
async def test_interrupt_cuts_a_stop_under_way_short(fast_env: Path) -> None:
    """A stop that drains (30 s by default) is cut short by interrupt(): running jobs go
    back to the queue with their checkpoints at their next step."""
    settings = load_settings()
    async with open_backend(settings) as backend:
        job_id = await _started(backend)
        stopping = asyncio.create_task(backend.stop())
        await asyncio.sleep(0.2)
        assert backend.held_jobs == 1 and not stopping.done()
        backend.interrupt()
        async with asyncio.timeout(STOP_BOUND_S):
            await stopping
        assert backend.held_jobs == 0
    assert _jobs(settings.data_dir) == [(job_id, "queued", 1, True)]


def test_workers_join_batches_by_the_services_step_times() -> None:
    """The worker's batching rule reads the service's cost model: by the default step
    model two 8-row jobs batch at 512 px (8.6% of the device time saved) but not at
    1024 px (2%), under the default batch_min_gain of 5%; with 1% they batch there too."""
    settings = load_settings()
    cost = CostModel(StepModel.from_settings(settings.scheduler))
    gain = settings.scheduler.batch_min_gain
    assert gain == 0.05
    assert _joins(cost, gain, ("m", 512, 512), 8, 8)
    assert not _joins(cost, gain, ("m", 1024, 1024), 8, 8)
    assert _joins(cost, 0.01, ("m", 1024, 1024), 8, 8)
