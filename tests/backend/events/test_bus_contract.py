"""The EventBus contract; every bus runs this same suite unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from backend.events import make_event_bus
from backend.events.base import EventBus, EventKind, JobEvent, Subscription
from backend.events.memory import LocalEventBus
from config.settings import QueueBackend, load_settings

# Builds a bus whose subscriptions buffer ``max_buffer`` events.
BusFactory = Callable[[int], EventBus]

IMPLEMENTATIONS: dict[str, BusFactory] = {
    "local": lambda max_buffer: LocalEventBus(max_buffer=max_buffer),
}

# Long enough for a delivered event to be there, short enough to keep the suite fast.
SILENCE_S = 0.05


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_bus(request: pytest.FixtureRequest) -> BusFactory:
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def bus(make_bus: BusFactory) -> EventBus:
    return make_bus(1000)


async def next_within(subscription: Subscription, timeout_s: float) -> JobEvent:
    return await asyncio.wait_for(anext(aiter(subscription)), timeout_s)


def test_satisfies_protocol(bus: EventBus) -> None:
    """The bus and its subscriptions are an EventBus and Subscriptions."""
    assert isinstance(bus, EventBus)
    subscription = bus.subscribe("a")
    assert isinstance(subscription, Subscription) and subscription.job_id == "a"
    assert bus.subscribe().job_id is None


async def test_subscriber_gets_events_until_final(bus: EventBus) -> None:
    """A job subscription yields that job's events and ends after the final one."""
    subscription = bus.subscribe("a")
    bus.publish(JobEvent("a", EventKind.STARTED))
    bus.publish(JobEvent("b", EventKind.STARTED))
    bus.publish(JobEvent("a", EventKind.STEP, 1, 2))
    bus.publish(JobEvent("a", EventKind.SUCCEEDED))
    kinds = [event.kind async for event in subscription]
    assert kinds == [EventKind.STARTED, EventKind.STEP, EventKind.SUCCEEDED]


async def test_an_every_job_subscription_sees_all_jobs_past_their_end(bus: EventBus) -> None:
    """Subscribing to None yields every job's events, final ones included, in order."""
    subscription = bus.subscribe()
    published = [
        JobEvent("a", EventKind.STARTED),
        JobEvent("b", EventKind.STARTED),
        JobEvent("a", EventKind.SUCCEEDED),
        JobEvent("b", EventKind.FAILED, error="boom"),
    ]
    for event in published:
        bus.publish(event)
    received = [await next_within(subscription, 1.0) for _ in published]
    subscription.close()
    assert received == published


async def test_slow_reader_keeps_the_final_event(make_bus: BusFactory) -> None:
    """When a buffer overflows, old progress is dropped but the final event arrives."""
    bus = make_bus(3)
    subscription = bus.subscribe("a")
    for step in range(10):
        bus.publish(JobEvent("a", EventKind.STEP, step, 10))
    bus.publish(JobEvent("a", EventKind.FAILED, error="boom"))
    events = [event async for event in subscription]
    assert events[-1].kind is EventKind.FAILED and len(events) == 3


async def test_closed_subscription_receives_nothing(bus: EventBus) -> None:
    """After close, published events no longer reach the subscription."""
    subscription = bus.subscribe("a")
    subscription.close()
    bus.publish(JobEvent("a", EventKind.STARTED))
    with pytest.raises(TimeoutError):
        await next_within(subscription, SILENCE_S)


async def test_unsubscribe_stops_delivery_to_that_subscription_only(bus: EventBus) -> None:
    """Unsubscribing one follower of a job leaves the job's other followers served."""
    gone, kept = bus.subscribe("a"), bus.subscribe("a")
    bus.unsubscribe(gone)
    bus.unsubscribe(gone)
    bus.publish(JobEvent("a", EventKind.SUCCEEDED))
    assert [event.kind async for event in kept] == [EventKind.SUCCEEDED]
    with pytest.raises(TimeoutError):
        await next_within(gone, SILENCE_S)


def test_publishing_without_subscribers_is_harmless(bus: EventBus) -> None:
    """An event nobody follows is dropped without error."""
    bus.publish(JobEvent("nobody", EventKind.QUEUED))


@pytest.mark.parametrize("backend", list(QueueBackend))
def test_the_factory_gives_the_in_process_bus_for_every_queue_backend(
    backend: QueueBackend,
) -> None:
    """Until a shared bus exists, each process fans out its own workers' events."""
    assert isinstance(
        make_event_bus(load_settings(queue={"backend": backend}).queue), LocalEventBus
    )
