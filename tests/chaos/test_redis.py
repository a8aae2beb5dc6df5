"""Redis mode under fire, on real processes and a private ``redis-server`` on a free port:
Redis stopped mid-job and started again, Redis restarted empty while a job waits, and
Ctrl-C. Each scenario ends with the promise checked: no job lost, none run twice, no
usage charged twice, no process left hanging."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import replace

import pytest

from backend.queue.redis import RedisQueue
from config.settings import load_settings
from tests.backend.queue.test_contract import make_job
from tests.chaos.harness import (
    INTERRUPTED_STATUSES,
    POLL_S,
    SHORT_PROMPT,
    ChaosEnv,
    CliRun,
    Lab,
    record_timing,
)
from tests.chaos.invariants import assert_invariants
from tests.redis_server import PrivateRedis

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

# Leases renewed every LEASE_S / 3: an outage of OUTAGE_S catches at least one renewal
# and ends well inside the lease. The job outlasts the outage, so the worker needs Redis
# again while it still runs.
LEASE_S = 12.0
OUTAGE_S = 5.0
OUTAGE_PROMPT = "a lighthouse in a storm --steps 300 --n 1 --seed 5"
# The queue watchdog's interval; a job held elsewhere keeps its lease far longer than
# the scenario lasts.
WATCH_INTERVAL_S = 0.5
HELD_LEASE_S = 600.0
# The worker's drain bound on shutdown, generous: a hang, not a slow exit, fails.
DRAIN_BOUND_S = 40.0


def _redis_env(lab: Lab, server: PrivateRedis) -> ChaosEnv:
    return lab.env.with_redis(server.url, f"chaos-{uuid.uuid4().hex[:12]}", lease_s=LEASE_S)


def _seconds_after(wall_s: float, at_ms: int | None) -> float | None:
    """Seconds from ``wall_s`` (epoch s) to ``at_ms`` (epoch ms); None without a time."""
    return None if at_ms is None else round(at_ms / 1000 - wall_s, 3)


def _outage(run: CliRun, seconds: float) -> None:
    """Keep Redis down for ``seconds``, watching the run (it may give up and exit)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run.poll()
        time.sleep(POLL_S)


@pytest.mark.parametrize("keep_data", [True, False], ids=["with-its-data", "empty"])
def test_redis_stopped_mid_job_and_back_the_job_finishes_once(lab: Lab, keep_data: bool) -> None:
    """Redis stopped mid-job and started again a few seconds later (with its data, or
    empty): the job finishes, in that run or a rerun, once and charged once; the CLI
    never waits forever."""
    server = lab.redis()
    env = _redis_env(lab, server)
    run = lab.generate(OUTAGE_PROMPT, env=env)
    job_id = run.wait_until_running()
    server.stop(keep_data=keep_data)
    _outage(run, OUTAGE_S)
    server.start()
    back_wall_s, back_s = time.time(), time.monotonic()
    status = run.wait_exit(after="Redis came back")
    job = lab.snapshot().jobs[job_id]
    reruns = [] if job.state == "succeeded" else lab.finish_pending(env=env)
    job = lab.snapshot().jobs[job_id]
    record_timing(
        f"redis_restarted_{'with_data' if keep_data else 'empty'}",
        # Negative: the result was recorded (SQLite) while Redis was still down.
        redis_back_to_job_finished_s=_seconds_after(back_wall_s, job.finished_at_ms),
        redis_back_to_exit_s=run.seconds_since(back_s),
        first_run_exit_status=status,
        reruns_to_finish=len(reruns),
    )
    if not reruns:
        assert status == 0, f"the job succeeded but the run exited {status}:\n{run.tail()}"
    # Emptied, Redis forgets the claim: the job may be claimed again from SQLite.
    claims = (1 if keep_data else 2) + len(reruns)
    assert_invariants(lab.snapshot(), lab.runs, max_attempts={job_id: claims})


def test_ctrl_c_in_redis_mode_exits_within_the_drain_bound(lab: Lab) -> None:
    """One Ctrl-C in Redis mode exits within the drain bound as interrupted, and the job
    it held is finished once by the next run."""
    server = lab.redis()
    env = _redis_env(lab, server)
    run = lab.generate(env=env)
    job_id = run.wait_until_running()
    sent_s = run.send(signal.SIGINT)
    assert sent_s is not None, "the run ended before the Ctrl-C"
    status = run.wait_exit(DRAIN_BOUND_S, after="Ctrl-C")
    record_timing("redis_sigint", signal_to_exit_s=run.seconds_since(sent_s), exit_status=status)
    assert status in INTERRUPTED_STATUSES, f"exit {status}:\n{run.tail()}"
    reruns = lab.finish_pending(env=env)
    assert_invariants(lab.snapshot(), lab.runs, max_attempts={job_id: 1 + len(reruns)})


async def _hold_the_running_slot(url: str, namespace: str, user_id: int) -> None:
    """Claim jobs of ``user_id`` the database never knew, as a worker elsewhere would,
    one per running slot of the free tier, so that the user's next job waits behind
    them."""
    slots = load_settings().scheduler.tiers["free"].max_running
    queue = RedisQueue.from_url(url, namespace=namespace)
    try:
        for slot in range(slots):
            job = make_job(f"held-elsewhere-{slot}", user_id=user_id, max_running=slots)
            await queue.enqueue(job)
            assert await queue.claim("elsewhere", lease_s=HELD_LEASE_S) is not None
    finally:
        await queue.close()


def test_redis_restarted_empty_before_a_job_is_claimed_the_job_still_runs(lab: Lab) -> None:
    """A job waiting behind its user's running one (held by a worker elsewhere) when
    Redis restarts empty (SHUTDOWN NOSAVE) is queued again by the queue watchdog: the
    run finishes it, once, instead of waiting forever."""
    server = lab.redis()
    redis_env = _redis_env(lab, server)
    extra = {**redis_env.extra, "IMAGINE_QUEUE__RECONCILE_INTERVAL_S": str(WATCH_INTERVAL_S)}
    env = replace(redis_env, extra=extra)
    asyncio.run(_hold_the_running_slot(server.url, extra["IMAGINE_QUEUE__NAMESPACE"], 0))
    run = lab.generate(SHORT_PROMPT, env=env)
    job_id = str(run.wait_for("job_queued")["job_id"])
    server.stop(keep_data=False)
    claimed = [r for r in run.events() if r.get("event") == "job_claimed"]
    assert not claimed, f"the job was claimed before Redis stopped: {claimed}"
    server.start()
    back_wall_s, back_s = time.time(), time.monotonic()
    status = run.wait_exit(after="Redis came back")
    record_timing(
        "redis_restarted_empty_job_waiting",
        redis_back_to_job_finished_s=_seconds_after(
            back_wall_s, lab.snapshot().jobs[job_id].finished_at_ms
        ),
        redis_back_to_exit_s=run.seconds_since(back_s),
        exit_status=status,
    )
    assert status == 0, f"exit {status}:\n{run.tail()}"
    assert_invariants(lab.snapshot(), lab.runs)
