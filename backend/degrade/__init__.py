"""Degradation: the ladder (pure policy), the override and host records, the level
stores (a contract in ``base``, memory and Redis) and their factory, the controller and
the load watcher.

The factory imports an implementation only when it builds one, so that importing the
pure ladder never loads a Redis client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from backend.errors import BackendError
from config.settings import QueueBackend, QueueSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from backend.degrade.base import LevelStore


def _memory(queue: QueueSettings, redis_client: Redis | None) -> LevelStore:
    from backend.degrade.memory import MemoryLevelStore

    return MemoryLevelStore()


def _redis(queue: QueueSettings, redis_client: Redis | None) -> LevelStore:
    from backend.degrade.redis import RedisLevelStore

    if redis_client is None:
        raise BackendError("queue.backend is 'redis' but make_level_store got no Redis client")
    return RedisLevelStore(redis_client, queue.namespace)


_FACTORIES: dict[QueueBackend, Callable[[QueueSettings, Redis | None], LevelStore]] = {
    QueueBackend.MEMORY: _memory,
    QueueBackend.REDIS: _redis,
}


def make_level_store(queue: QueueSettings, redis_client: Redis | None = None) -> LevelStore:
    """The store for ``queue.backend``: with Redis, shared by every process on that
    Redis; in memory, this process's alone."""
    return _FACTORIES[queue.backend](queue, redis_client)
