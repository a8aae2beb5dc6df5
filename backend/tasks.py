"""Long-lived tasks (the worker's loops, the load watcher, the queue watchdog): supervised
while they run, stopped within a bound, and final bookkeeping that runs to its end even
when its caller is cancelled.

A cancellation is not guaranteed to land: Python 3.11's ``asyncio.wait_for``, which the
Redis client uses for every command it sends, swallows a cancel that arrives as the
command completes. So no wait here trusts one cancel: :func:`stop` cancels again until
the task ends or its bound is up, and the loops it stops also check a flag of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A crashed task restarts after this, doubling with each crash in a row up to the cap.
RESTART_FIRST_S = 0.05
RESTART_MAX_S = 5.0
# A task that ran this long before it crashed starts its backoff afresh.
RESTART_RESET_S = 60.0
# How often stop() cancels a task again that is still running.
RECANCEL_S = 0.05


async def supervise(name: str, body: Callable[[], Awaitable[None]], done: asyncio.Event) -> None:
    """Run ``body`` until it returns or ``done`` is set. An exception is logged (with the
    task's name and the error; the body binds a job id where it has one) and the body
    restarts after a backoff: a task never dies silently."""
    loop = asyncio.get_running_loop()
    crashes = 0
    while not done.is_set():
        started = loop.time()
        try:
            await body()
            return
        except Exception as exc:
            crashes = 1 if loop.time() - started > RESTART_RESET_S else crashes + 1
            delay_s = min(RESTART_FIRST_S * 2 ** (crashes - 1), RESTART_MAX_S)
            log.exception(
                "worker_task_crashed",
                task=name,
                error=f"{type(exc).__name__}: {exc}",
                crashes=crashes,
                restart_in_s=delay_s,
            )
        await wait_set(done, delay_s)


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``event``; whether it is set."""
    if timeout_s > 0 and not event.is_set():
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass
    return event.is_set()


async def settle(
    tasks: Iterable[asyncio.Future[Any]], timeout_s: float
) -> set[asyncio.Future[Any]]:
    """Wait up to ``timeout_s`` for ``tasks`` to end by themselves; the ones still running."""
    pending = {task for task in tasks if not task.done()}
    if pending and timeout_s > 0:
        _, pending = await asyncio.wait(pending, timeout=timeout_s)
    return pending


async def stop(tasks: Iterable[asyncio.Task[Any]], timeout_s: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks``, again and again while they run, for up to ``timeout_s``; the ones
    that did not end (logged). Never raises a task's own error or cancellation; a cancel
    of the caller propagates."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, remaining))
    for task in pending:
        log.error("worker_task_left_running", task=task.get_name(), bound_s=timeout_s)
    return pending


def run_final(work: Awaitable[T]) -> asyncio.Future[T]:
    """Start final bookkeeping as a future of its own, so that a cancel of whoever awaits
    it (through ``asyncio.shield``) never cuts it short; its error, if nobody awaited it
    to the end, is logged rather than lost."""
    future = asyncio.ensure_future(work)
    future.add_done_callback(_log_unobserved)
    return future


async def final(work: Awaitable[T], timeout_s: float) -> T:
    """Await final bookkeeping under ``asyncio.shield`` for up to ``timeout_s``
    (TimeoutError after that; the work goes on and its outcome is logged)."""
    future = run_final(work)
    async with asyncio.timeout(timeout_s):
        return await asyncio.shield(future)


def _log_unobserved(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    error = future.exception()  # marks it retrieved; the awaiter, if any, saw it too
    if error is not None:
        log.debug("final_bookkeeping_error", error=f"{type(error).__name__}: {error}")
