"""Job queues: one contract (``base.JobQueue``), one implementation per backend."""

from __future__ import annotations

from collections.abc import Callable

from backend.queue.base import JobQueue, Lease
from backend.queue.memory import MemoryQueue
from backend.queue.redis import RedisQueue
from backend.scheduling.fairness import AgingPolicy
from config.settings import QueueBackend, SchedulerSettings, Settings

__all__ = ["JobQueue", "Lease", "MemoryQueue", "RedisQueue", "aging_policy", "make_queue"]


def aging_policy(scheduler: SchedulerSettings) -> AgingPolicy:
    """Each lane's wait bound and the aging fraction, as the settings give them."""
    return AgingPolicy.from_settings(scheduler)


def _redis(settings: Settings, aging: AgingPolicy) -> JobQueue:
    return RedisQueue.from_url(
        settings.queue.redis_url.get_secret_value(),
        namespace=settings.queue.namespace,
        aging=aging,
    )


def _memory(settings: Settings, aging: AgingPolicy) -> JobQueue:
    return MemoryQueue(aging=aging)


_FACTORIES: dict[QueueBackend, Callable[[Settings, AgingPolicy], JobQueue]] = {
    QueueBackend.MEMORY: _memory,
    QueueBackend.REDIS: _redis,
}


def make_queue(settings: Settings) -> JobQueue:
    """The queue backend named by ``settings.queue.backend``, aging as the scheduler
    settings say."""
    return _FACTORIES[settings.queue.backend](settings, aging_policy(settings.scheduler))
