"""A poll for conditions nothing signals (the private redis-server these tests stop and
start is the root ``private_redis`` fixture)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from backend.events.base import JobEvent, Subscription

# A condition a test waits for that has not come after this never will.
EVENTUALLY_BOUND_S = 10.0


async def eventually(check: Callable[[], Awaitable[bool] | bool]) -> None:
    """Return once ``check`` holds, polling it; TimeoutError (a hang) after the bound."""
    async with asyncio.timeout(EVENTUALLY_BOUND_S):
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(0.02)


async def events_until_final(subscription: Subscription) -> list[JobEvent]:
    """A job's events up to and including its final one; TimeoutError (a hang) after
    the bound."""
    seen: list[JobEvent] = []
    async with asyncio.timeout(EVENTUALLY_BOUND_S):
        async for event in subscription:
            seen.append(event)
            if event.kind.is_final:
                break
    return seen
