"""Job queues: one contract (``base.JobQueue``), one implementation per backend."""

from __future__ import annotations

from backend.queue.base import JobQueue, Lease
from backend.queue.memory import MemoryQueue
from config.settings import QueueBackend, Settings

__all__ = ["JobQueue", "Lease", "MemoryQueue", "make_queue"]


def make_queue(settings: Settings) -> JobQueue:
    """The queue backend named by ``settings.queue.backend``."""
    factories = {QueueBackend.MEMORY: MemoryQueue}
    factory = factories.get(settings.queue.backend)
    if factory is None:
        from backend.errors import BadInputError

        raise BadInputError(
            f"queue.backend={settings.queue.backend.value!r} is not available in this version; "
            "use 'memory'"
        )
    return factory()
