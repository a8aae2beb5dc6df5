"""The in-process event bus: subscriptions fanned out within one process."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from backend.events.base import JobEvent, Subscription

__all__ = ["LocalEventBus", "LocalSubscription"]


class LocalSubscription:
    """Events of one job (or of all jobs), buffered from the moment of subscribing."""

    def __init__(self, bus: LocalEventBus, job_id: str | None, max_buffer: int) -> None:
        self._bus = bus
        self.job_id = job_id
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(max_buffer)

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[JobEvent]:
        try:
            while True:
                event = await self.queue.get()
                yield event
                if self.job_id is not None and event.kind.is_final:
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop receiving events; what is buffered stays readable."""
        self._bus.unsubscribe(self)


class LocalEventBus:
    """The bus of one process: each process fans out the events of its own workers."""

    def __init__(self, *, max_buffer: int = 1000) -> None:
        self._subscribers: dict[str | None, set[LocalSubscription]] = defaultdict(set)
        self._max_buffer = max_buffer

    def subscribe(self, job_id: str | None = None) -> LocalSubscription:
        """Follow one job until its final event, or every job (``None``) until closed."""
        subscription = LocalSubscription(self, job_id, self._max_buffer)
        self._subscribers[job_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``; unknown ones are ignored."""
        if not isinstance(subscription, LocalSubscription):
            return
        subscribers = self._subscribers.get(subscription.job_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.job_id]

    def publish(self, event: JobEvent) -> None:
        """Deliver ``event`` at once to its job's and the every-job subscriptions."""
        targets = (*self._subscribers.get(event.job_id, ()), *self._subscribers.get(None, ()))
        for subscription in targets:
            if subscription.queue.full():
                # A reader that fell behind loses old progress, never the final event.
                subscription.queue.get_nowait()
            subscription.queue.put_nowait(event)
