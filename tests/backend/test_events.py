"""The in-process event bus."""

from __future__ import annotations

from backend.events.base import EventKind, JobEvent
from backend.events.memory import EventBus


async def test_subscriber_gets_events_until_final() -> None:
    """A job subscription yields that job's events and ends after the final one."""
    bus = EventBus()
    subscription = bus.subscribe("a")
    bus.publish(JobEvent("a", EventKind.STARTED))
    bus.publish(JobEvent("b", EventKind.STARTED))
    bus.publish(JobEvent("a", EventKind.STEP, 1, 2))
    bus.publish(JobEvent("a", EventKind.SUCCEEDED))
    kinds = [event.kind async for event in subscription]
    assert kinds == [EventKind.STARTED, EventKind.STEP, EventKind.SUCCEEDED]


async def test_slow_reader_keeps_the_final_event() -> None:
    """When a buffer overflows, old progress is dropped but the final event arrives."""
    bus = EventBus(max_buffer=3)
    subscription = bus.subscribe("a")
    for step in range(10):
        bus.publish(JobEvent("a", EventKind.STEP, step, 10))
    bus.publish(JobEvent("a", EventKind.FAILED, error="boom"))
    events = [event async for event in subscription]
    assert events[-1].kind is EventKind.FAILED and len(events) == 3


async def test_closed_subscription_receives_nothing() -> None:
    """After close, publishing does not buffer events for the subscription."""
    bus = EventBus()
    subscription = bus.subscribe("a")
    subscription.close()
    bus.publish(JobEvent("a", EventKind.STARTED))
    assert subscription.queue.empty()
