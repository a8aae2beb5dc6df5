"""Admission control: rate limits (token buckets: the arithmetic and the store contract
in ``base``, memory and Redis stores), the policy that applies them (``limits``), and
banned-word matching that sees through look-alike letters (``moderation``).

The factory imports an implementation only when it builds one, so that importing the
pure bucket arithmetic never loads a Redis client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from backend.errors import BackendError
from config.settings import QueueBackend, QueueSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from backend.admission.base import BucketStore


def _memory(queue: QueueSettings, redis_client: Redis | None) -> BucketStore:
    from backend.admission.memory import MemoryBuckets

    return MemoryBuckets()


def _redis(queue: QueueSettings, redis_client: Redis | None) -> BucketStore:
    from backend.admission.redis import RedisBuckets

    if redis_client is None:
        raise BackendError("queue.backend is 'redis' but make_buckets got no Redis client")
    return RedisBuckets(redis_client, queue.namespace)


_FACTORIES: dict[QueueBackend, Callable[[QueueSettings, Redis | None], BucketStore]] = {
    QueueBackend.MEMORY: _memory,
    QueueBackend.REDIS: _redis,
}


def make_buckets(queue: QueueSettings, redis_client: Redis | None = None) -> BucketStore:
    """The bucket store for ``queue.backend``: Redis buckets are shared by every process
    on that Redis, memory ones only within this process."""
    return _FACTORIES[queue.backend](queue, redis_client)
