"""``imagine bench queue``: operations per second of each queue backend, and how long a
claim takes with a deep queue.

One client awaits each operation in turn, as one worker does. The queue first holds
``preload`` jobs (untimed), then ``ops`` more are enqueued, claimed and acked, each
phase timed on its own; every claim is also timed alone for the latency percentiles,
so they are measured with at least ``preload`` jobs queued. Jobs come from about 100
users in the three lanes, with random costs and weights. They have no running cap:
the claim phase holds every lease until the ack phase, and capped users would run dry.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from backend.errors import BackendError
from backend.models import Job, JobSpec, Lane
from backend.queue.base import JobQueue, Lease
from backend.queue.memory import MemoryQueue
from backend.queue.redis import RedisQueue
from backend.stats import percentile

BACKENDS: tuple[str, ...] = ("memory", "redis")
# What one worker's loop needs on a 2-core machine, Redis on loopback.
TARGETS = {"memory_ops_s": 20_000, "redis_ops_s": 2_000}
USERS = 100
TIERS = (("free", 1.0), ("basic", 2.0), ("pro", 4.0))
LEASE_S = 600.0  # longer than any run: no lease expires mid-benchmark
SEED = 7


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """One backend's figures: rates per phase, the combined rate, claim latency."""

    enqueue_ops_s: float
    claim_ops_s: float
    ack_ops_s: float
    ops_s: float
    claim_p50_ms: float
    claim_p99_ms: float
    queued: int


def run_queue_bench(
    *,
    backends: list[str],
    ops: int,
    preload: int,
    redis_url: str,
    namespace: str,
    as_json: bool,
    emit: Callable[[str], None],
) -> dict[str, Any]:
    """Measure each backend and return the figures (the shape ``--json`` prints).

    Redis keys go under a fresh ``{namespace}:bench:<random>`` namespace, deleted
    afterwards, so a live queue in ``namespace`` is never touched.
    """
    figures: dict[str, QueueFigures] = {}
    for name in backends:
        if name == "memory":
            figures[name] = asyncio.run(_measure_memory(ops, preload))
        else:
            bench_namespace = f"{namespace}:bench:{secrets.token_hex(4)}"
            figures[name] = asyncio.run(_measure_redis(redis_url, bench_namespace, ops, preload))
    result: dict[str, Any] = {
        "backends": {name: asdict(one) for name, one in figures.items()},
        "targets": dict(TARGETS),
    }
    for line in _table(figures):
        emit(line)
    if as_json:
        emit(json.dumps(result, separators=(",", ":")))
    return result


async def _measure_memory(ops: int, preload: int) -> QueueFigures:
    queue = MemoryQueue()
    try:
        return await _measure(queue, ops, preload)
    finally:
        await queue.close()


async def _measure_redis(url: str, namespace: str, ops: int, preload: int) -> QueueFigures:
    queue = RedisQueue.from_url(url, namespace=namespace)
    try:
        return await _measure(queue, ops, preload)
    finally:
        try:
            await asyncio.shield(queue.purge())
        finally:
            await queue.close()


async def _measure(queue: JobQueue, ops: int, preload: int) -> QueueFigures:
    rng = random.Random(SEED)
    for job in _jobs("p", preload, rng):
        await queue.enqueue(job)
    jobs = _jobs("o", ops, rng)

    started = time.perf_counter()
    for job in jobs:
        await queue.enqueue(job)
    enqueued = time.perf_counter()

    leases: list[Lease] = []
    latencies_s: list[float] = []
    for _ in range(ops):
        before = time.perf_counter()
        lease = await queue.claim("bench", lease_s=LEASE_S)
        latencies_s.append(time.perf_counter() - before)
        if lease is None:  # at least `ops` jobs are queued: a broken backend
            raise BackendError(f"queue ran dry after {len(leases)} of {ops} claims")
        leases.append(lease)
    claimed = time.perf_counter()

    for lease in leases:
        await queue.ack(lease)
    acked = time.perf_counter()

    return QueueFigures(
        enqueue_ops_s=_rate(ops, enqueued - started),
        claim_ops_s=_rate(ops, claimed - enqueued),
        ack_ops_s=_rate(ops, acked - claimed),
        ops_s=_rate(3 * ops, acked - started),
        claim_p50_ms=round(percentile(latencies_s, 50) * 1000, 3),
        claim_p99_ms=round(percentile(latencies_s, 99) * 1000, 3),
        queued=preload,
    )


def _jobs(prefix: str, count: int, rng: random.Random) -> list[Job]:
    spec = JobSpec(prompt="a lighthouse at dusk", seed=1, width=512, height=512)
    users = [(user_id, *rng.choice(TIERS)) for user_id in range(USERS)]
    jobs = []
    for index in range(count):
        user_id, tier, weight = rng.choice(users)
        jobs.append(
            Job(
                id=f"{prefix}{index}",
                spec=spec,
                user_id=user_id,
                tier=tier,
                lane=rng.choice((Lane.REALTIME, Lane.BATCH, Lane.BACKGROUND)),
                cost_s=round(rng.uniform(0.5, 120.0), 3),
                weight=weight,
            )
        )
    return jobs


def _rate(count: int, seconds: float) -> float:
    return round(count / max(seconds, 1e-9), 1)


def _table(figures: dict[str, QueueFigures]) -> list[str]:
    lines = [
        f"{'backend':<8} {'enqueue/s':>10} {'claim/s':>10} {'ack/s':>10} {'total/s':>10} "
        f"{'claim p50 ms':>13} {'p99 ms':>8} {'queued':>7}"
    ]
    for name, one in figures.items():
        lines.append(
            f"{name:<8} {one.enqueue_ops_s:>10,.0f} {one.claim_ops_s:>10,.0f} "
            f"{one.ack_ops_s:>10,.0f} {one.ops_s:>10,.0f} {one.claim_p50_ms:>13.3f} "
            f"{one.claim_p99_ms:>8.3f} {one.queued:>7}"
        )
    for name, one in figures.items():
        target = TARGETS[f"{name}_ops_s"]
        verdict = "met" if one.ops_s >= target else "MISSED"
        lines.append(f"target {name}: >= {target:,} ops/s, {verdict}")
    return lines
