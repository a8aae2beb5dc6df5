"""The worker's task helpers: a crashed task is logged and restarted, a task that
swallows a cancellation is cancelled again until it ends (or its bound is up), and final
bookkeeping runs to its end when its caller is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableMapping
from typing import Any

from backend.tasks import final, stop, supervise

Logs = list[MutableMapping[str, Any]]


async def test_a_crashing_body_is_logged_and_restarted(logs: Logs) -> None:
    """Each crash is logged with the task's name and error, and the body runs again."""
    runs = 0
    done = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"crash {runs}")

    async with asyncio.timeout(5):
        await supervise("claim", body, done)
    assert runs == 3
    crashes = [e for e in logs if e["event"] == "worker_task_crashed"]
    assert [(e["task"], e["error"]) for e in crashes] == [
        ("claim", "RuntimeError: crash 1"),
        ("claim", "RuntimeError: crash 2"),
    ]


async def test_stop_cancels_again_a_task_that_swallowed_a_cancel() -> None:
    """A task that swallows the first cancellation (as a command sent through Python
    3.11's wait_for may) still ends: stop cancels it again."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop([task], timeout_s=5) == set()
    assert swallowed.is_set() and task.cancelled()


async def test_stop_gives_up_on_a_task_at_its_bound(logs: Logs) -> None:
    """A task that ignores every cancellation is reported (logged, returned) once the
    bound is up, instead of being waited for forever."""
    released = asyncio.Event()

    async def deaf() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(60)

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    assert await stop([task], timeout_s=0.2) == {task}
    assert any(e["event"] == "worker_task_left_running" for e in logs)
    released.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5)


async def test_final_bookkeeping_outlives_a_cancelled_caller() -> None:
    """Cancelling whoever awaits final bookkeeping does not cut the bookkeeping short."""
    recorded = asyncio.Event()

    async def record() -> None:
        await asyncio.sleep(0.05)
        recorded.set()

    caller = asyncio.create_task(final(record(), timeout_s=5))
    await asyncio.sleep(0)
    caller.cancel()
    async with asyncio.timeout(5):
        await recorded.wait()
    assert caller.cancelled()
