"""The service's scheduling decisions: tiers, lanes, budgets, admission, degradation
and reconciliation with SQLite, without a device (jobs stay queued)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.app import Backend, open_backend
from backend.clock import usage_month, wall_ms
from backend.degrade.ladder import Level
from backend.errors import BadInputError, RefusedError
from backend.models import JobSpec, Lane, Speed
from backend.queue.memory import MemoryQueue
from config.settings import load_settings
from storage.db import Database
from tests.conftest import REDIS_URL


@pytest.fixture
async def app(engine_env: Path) -> AsyncIterator[Backend]:
    async with open_backend(load_settings(), local_worker=False) as backend:
        yield backend


def spec(**kw: object) -> JobSpec:
    values: dict[str, object] = {"prompt": "a cat", "seed": 1, "width": 512, "height": 512}
    values.update(kw)
    return JobSpec(**values)  # type: ignore[arg-type]


async def test_lane_follows_cost_and_tier_weights_are_stamped(app: Backend) -> None:
    """A short job is realtime, a long large one batch; the job carries its tier's
    weight, running cap and estimated cost."""
    await app.db.users.ensure(5)
    await app.db.users.set_tier(5, "pro")
    short = await app.service.submit(spec(steps=4), user_id=5)
    long = await app.service.submit(spec(steps=50, width=1024, height=1024), user_id=5)
    assert short.lane is Lane.REALTIME and long.lane is Lane.BATCH
    assert (short.tier, short.weight, short.max_running) == ("pro", 4.0, 6)
    assert long.cost_s > 10 * short.cost_s
    turbo = await app.service.submit(
        spec(steps=50, width=1024, height=1024, speed=Speed.TURBO), user_id=5
    )
    assert turbo.lane is Lane.REALTIME


async def test_spent_fast_budget_falls_back_to_relax(app: Backend) -> None:
    """Once a free user's monthly fast GPU-seconds are used up, jobs go to background."""
    await app.db.usage.add(9, usage_month(wall_ms()), fast_s=1800.0, relax_s=0.0)
    job = await app.service.submit(spec(steps=4), user_id=9)
    assert job.lane is Lane.BACKGROUND and job.meta["speed"] == "relax"


async def test_job_larger_than_a_device_is_refused(app: Backend) -> None:
    """More guided samples than the device's rows is refused before anything is stored."""
    with pytest.raises(BadInputError, match="UNet rows"):
        await app.service.submit(spec(n=16), user_id=3)
    assert await app.db.jobs.list_for_user(3) == []


async def test_queued_cap_and_rate_limit_refuse_with_retry(app: Backend) -> None:
    """A free user may have four jobs waiting; the fifth is refused, saying why."""
    for _ in range(4):
        await app.service.submit(spec(steps=4), user_id=11)
    with pytest.raises(RefusedError) as refused:
        await app.service.submit(spec(steps=4), user_id=11)
    assert refused.value.scope == "queued"
    assert "4 queued jobs" in str(refused.value)


async def test_light_degradation_runs_fewer_steps(app: Backend) -> None:
    """Under light degradation a 30-step job is queued with 18 steps."""
    await app.degrade.set_override(Level.LIGHT, actor_id=1)
    job = await app.service.submit(spec(steps=30), user_id=12)
    assert job.spec.steps == 18


async def test_medium_degradation_pauses_free_claims(app: Backend) -> None:
    """Medium: free-tier jobs queue but a device's claim skips them; paid ones start."""
    await app.degrade.set_override(Level.MEDIUM, actor_id=1)
    await app.db.users.ensure(21)
    await app.db.users.set_tier(21, "basic")
    await app.service.submit(spec(steps=4), user_id=20)
    paid = await app.service.submit(spec(steps=4), user_id=21)
    allow = app.degrade.restrictions.claim_filter
    lease = await app.queue.claim("w", lease_s=10, allow=allow)
    assert lease is not None and lease.job.id == paid.id
    assert await app.queue.claim("w", lease_s=10, allow=allow) is None


async def test_reconcile_re_enqueues_what_the_queue_lost(app: Backend) -> None:
    """Queued and running jobs in SQLite come back after the queue is emptied (a Redis
    flush); a preempted job's checkpoint stays in SQLite for its resume."""
    first = await app.service.submit(spec(steps=4), user_id=30)
    second = await app.service.submit(spec(steps=4), user_id=31)
    await app.db.jobs.mark_started(second.id)
    await app.db.jobs.save_checkpoint(second.id, b"state")
    app.service.queue = MemoryQueue()
    assert await app.service.reconcile() == 2
    assert await app.service.reconcile() == 0  # idempotent
    assert await app.service.queue.depth() == 2
    row = await app.db.jobs.get(second.id)
    assert row is not None and row.state == "queued"
    assert await app.db.jobs.checkpoint(second.id) == b"state"
    lease = await app.service.queue.claim("w", lease_s=10)
    assert lease is not None and lease.job.id == first.id and lease.job.meta["speed"] == "fast"


async def test_a_job_recorded_but_never_queued_is_queued_at_the_next_start(
    engine_env: Path,
) -> None:
    """A crash between recording a job and queuing it leaves it submitted; the next
    start queues it, so a device takes it and it does not hold the user's queue cap
    forever."""
    settings = load_settings()
    async with Database.open(settings.database_path) as db:
        await db.jobs.insert("cut-short", 40, spec(steps=4).to_json(), Lane.REALTIME.value)
    async with open_backend(settings, local_worker=False) as app:
        row = await app.db.jobs.get("cut-short")
        assert row is not None and row.state == "queued"
        lease = await app.queue.claim("w", lease_s=10)
        assert lease is not None and lease.job.id == "cut-short"
        assert lease.job.lane is Lane.REALTIME and lease.job.cost_s > 0
        assert await app.service.reconcile() == 0  # the queue has it now


async def test_a_job_that_cannot_be_rebuilt_fails_instead_of_stopping_the_start(
    engine_env: Path,
) -> None:
    """A stored job whose model left the settings fails with the reason at start-up
    (submitted or queued alike) and no longer counts against its user's queue cap."""
    settings = load_settings()
    gone = spec(model="retired").to_json()
    async with Database.open(settings.database_path) as db:
        await db.jobs.insert("never-queued", 41, gone, Lane.REALTIME.value)
        await db.jobs.insert("was-queued", 41, gone, Lane.REALTIME.value)
        await db.jobs.mark_queued("was-queued")
    async with open_backend(settings, local_worker=False) as app:
        for job_id in ("never-queued", "was-queued"):
            row = await app.db.jobs.get(job_id)
            assert row is not None and row.state == "failed"
            assert row.error is not None and "retired" in row.error
        assert await app.db.jobs.count_waiting(41) == 0
        assert await app.queue.depth() == 0


async def test_queued_job_has_a_position_and_an_eta_from_the_work_ahead(app: Backend) -> None:
    """Each queued job reports its place in its lane and a start estimate that grows
    with the work ahead of it; the queued event carries the estimate."""
    await app.db.users.set_tier(21, "admin")
    follow = app.events.subscribe(None)
    jobs = [await app.service.submit(spec(steps=4, seed=i), user_id=21) for i in range(3)]
    statuses = [await app.service.status(job.id) for job in jobs]
    assert [s.position for s in statuses if s is not None] == [0, 1, 2]
    starts = [s.start_in_s for s in statuses if s is not None]
    assert starts[0] == 0.0 and 0 < starts[1] < starts[2]
    assert starts[2] == pytest.approx(2 * starts[1])
    assert all(s is not None and s.finish_in_s > s.start_in_s for s in statuses)
    queued = [await anext(aiter(follow)) for _ in range(3)]
    follow.close()
    assert [e.eta_s for e in queued] == pytest.approx([0.0, starts[1], starts[2]])
    assert await app.service.status("no-such-job") is None


async def test_device_delay_and_learned_bias_shape_the_eta(app: Backend) -> None:
    """A busy device adds its delay; a lane whose jobs keep starting later than
    estimated gets later estimates."""
    job = await app.service.submit(spec(steps=4), user_id=22)
    app.service.device_delay_s = lambda _job: 3.0
    status = await app.service.status(job.id)
    assert status is not None and status.start_in_s == pytest.approx(3.0)
    for _ in range(200):
        app.service._estimated[job.id] = 3.0
        app.service.job_started(job, 9.5)
    later = await app.service.status(job.id)
    assert later is not None and later.start_in_s == pytest.approx(9.0, rel=0.05)


async def test_a_lease_nobody_here_renews_counts_in_the_eta(
    engine_env: Path, monkeypatch: pytest.MonkeyPatch, redis_namespace: str
) -> None:
    """In Redis mode, a free user's running slot held by another process's worker (dead,
    for all this process knows) delays their next job by the whole lease and the held
    job's rerun; a job this process's worker holds does not."""
    monkeypatch.setenv("IMAGINE_QUEUE__BACKEND", "redis")
    monkeypatch.setenv("IMAGINE_QUEUE__REDIS_URL", REDIS_URL)
    monkeypatch.setenv("IMAGINE_QUEUE__NAMESPACE", redis_namespace)
    monkeypatch.setenv("IMAGINE_QUEUE__LEASE_S", "45")
    async with open_backend(load_settings(), local_worker=False) as app:
        held = await app.service.submit(spec(steps=4), user_id=50)
        slots = [held]  # the free tier's every running slot, held elsewhere
        slots += [
            await app.service.submit(spec(steps=4, seed=10 + i), user_id=50)
            for i in range(held.max_running - 1)
        ]
        for job in slots:
            lease = await app.queue.claim("another-host:cuda:0", lease_s=45)
            assert lease is not None and lease.job.id == job.id
            await app.db.jobs.claim_attempt(job.id, lease.attempt, lease.token)
        waiting = await app.service.submit(spec(steps=4), user_id=50)
        status = await app.service.status(waiting.id)
        assert status is not None and status.position == 0
        assert status.start_in_s == pytest.approx(45.0 + held.cost_s)
        other_user = await app.service.submit(spec(steps=4, seed=2), user_id=51)
        assert (await app.service.status(other_user.id)).start_in_s < 45.0  # type: ignore[union-attr]
        app.service.held_here = lambda job_id: job_id in {job.id for job in slots}
        status = await app.service.status(waiting.id)
        assert status is not None and status.start_in_s < 45.0


async def test_in_memory_mode_a_running_job_never_counts_as_a_stalled_lease(app: Backend) -> None:
    """The memory queue's leases are all this process's, so a running job of the user
    adds no lease time to their next job's estimate."""
    held = await app.service.submit(spec(steps=4), user_id=52)
    lease = await app.queue.claim("w", lease_s=45)
    assert lease is not None and lease.job.id == held.id
    await app.db.jobs.claim_attempt(held.id, lease.attempt, lease.token)
    waiting = await app.service.submit(spec(steps=4), user_id=52)
    status = await app.service.status(waiting.id)
    assert status is not None and status.start_in_s < 45.0
