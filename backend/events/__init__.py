"""Job events: the bus contract (``base.EventBus``), its implementations and their factory.

Both queue backends get the in-process bus today: each process fans out the events of
its own workers to its own followers. A bus over a Redis stream, which lets a front end
follow jobs that run on other hosts, is to come; the factory is where it will plug in.
"""

from __future__ import annotations

from collections.abc import Callable

from backend.events.base import EventBus, EventKind, JobEvent, Subscription
from backend.events.memory import LocalEventBus, LocalSubscription
from config.settings import QueueBackend, QueueSettings

__all__ = [
    "EventBus",
    "EventKind",
    "JobEvent",
    "LocalEventBus",
    "LocalSubscription",
    "Subscription",
    "make_event_bus",
]


def _local(queue: QueueSettings) -> EventBus:
    return LocalEventBus()


_FACTORIES: dict[QueueBackend, Callable[[QueueSettings], EventBus]] = {
    QueueBackend.MEMORY: _local,
    # Until the Redis stream bus exists a Redis deployment fans out per process too.
    QueueBackend.REDIS: _local,
}


def make_event_bus(queue: QueueSettings) -> EventBus:
    """The event bus for ``queue.backend`` (the in-process bus for both today)."""
    return _FACTORIES[queue.backend](queue)
