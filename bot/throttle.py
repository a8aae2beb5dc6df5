"""Throttled, coalesced edits of progress messages.

Each job keeps one Discord message and edits it as the image denoises. Discord allows about
five message edits per five seconds in a channel (discord.py sleeps through a 429 in the
middle of ``edit``), so the bot never sends every state it is offered:

- Per message, at most one edit every ``interval_s``, counted from when the previous
  edit ended (so a slow send cannot make two land close together); states offered in
  between are coalesced: only the newest is sent when the message is due again.
- Per channel, at most ``channel_budget`` sends in any ``channel_window_s`` (a sliding
  window of send starts). A due message over budget waits, never dropped; the one that
  has waited longest goes first.
- A final state (the result, a failure, a cancel) skips the per-message interval, goes
  before progress in its channel's budget, and waits only for a send of the same message
  already in flight. Once a final is offered, later progress for that message is ignored
  and pending progress dropped; a newer final replaces one not yet sent, and one offered
  after the last was sent is sent too.

:class:`EditThrottle` is that policy, pure, with the clock passed in. :class:`EditPump` owns
the task that drives it: it sends concurrently across messages (one send in flight per
message), logs a failed send and goes on, and retries a failed final after each
of its configured delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Self, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

FINAL_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)
"""Waits before each retry of a final state whose send raised: five tries in about 15 s."""


@dataclass(frozen=True, slots=True)
class Due(Generic[T]):
    """An edit to send now: the newest state offered for one message."""

    channel_id: int
    message_key: Hashable
    state: T
    final: bool
    attempt: int = 0
    """Earlier sends of this same final state that failed (0 on a first try)."""


@dataclass(slots=True)
class _Message(Generic[T]):
    """What the throttle knows of one message."""

    channel_id: int
    pending: Due[T] | None = None
    ready_since_s: float = -math.inf
    sending: Due[T] | None = None
    last_sent_s: float = -math.inf
    finalised: bool = False
    sends: int = 0


class EditThrottle(Generic[T]):
    """The edit policy of the module's docstring, pure: every call takes the time.

    Call :meth:`offer` with each new state, :meth:`take_due` to get the edits to send now
    (each marked in flight), :meth:`done` when a send ends, and sleep until
    :meth:`next_due_s`. A message leaves the throttle when its final state has been sent
    (its key is then remembered, among the last ``remember_finished``, so that late
    progress is still ignored) or when :meth:`forget` is called for it.
    """

    def __init__(
        self,
        interval_s: float = 3.0,
        channel_budget: int = 5,
        channel_window_s: float = 5.0,
        *,
        remember_finished: int = 4096,
    ) -> None:
        if interval_s < 0 or channel_budget < 1 or channel_window_s <= 0:
            raise ValueError(
                "edit throttle needs interval_s >= 0, channel_budget >= 1 and "
                f"channel_window_s > 0, got {interval_s}, {channel_budget}, {channel_window_s}"
            )
        self.interval_s = interval_s
        self.channel_budget = channel_budget
        self.channel_window_s = channel_window_s
        self._remember_finished = remember_finished
        self._messages: dict[Hashable, _Message[T]] = {}
        self._finished: OrderedDict[Hashable, int] = OrderedDict()
        self._windows: dict[int, deque[float]] = {}

    def offer(
        self,
        channel_id: int,
        message_key: Hashable,
        state: T,
        *,
        final: bool = False,
        now_s: float,
    ) -> None:
        """Make ``state`` the newest state of the message; older unsent ones are dropped."""
        message = self._messages.get(message_key)
        if message is None:
            if message_key in self._finished and not final:
                return
            message = _Message(channel_id, sends=self._finished.pop(message_key, 0))
            self._messages[message_key] = message
        if message.finalised and not final:
            return
        if message.pending is None:
            message.ready_since_s = now_s
        elif final:
            # A new final is due at once, even over a retry that was waiting.
            message.ready_since_s = min(message.ready_since_s, now_s)
        message.channel_id = channel_id
        message.pending = Due(channel_id, message_key, state, final)
        message.finalised = message.finalised or final

    def take_due(self, now_s: float) -> list[Due[T]]:
        """The edits to send now, finals first, then by how long they have waited; each is
        marked in flight until :meth:`done`."""
        for channel_id in list(self._windows):
            if not self._window(channel_id, now_s):
                del self._windows[channel_id]
        ready = [
            (not message.pending.final, ready_s, message)
            for message in self._messages.values()
            if message.pending is not None
            and (ready_s := self._ready_s(message)) is not None
            and ready_s <= now_s
        ]
        ready.sort(key=lambda entry: entry[:2])
        taken: list[Due[T]] = []
        for _, _, message in ready:
            window = self._window(message.channel_id, now_s)
            if len(window) >= self.channel_budget:
                continue
            window.append(now_s)
            assert message.pending is not None
            taken.append(message.pending)
            message.sending, message.pending = message.pending, None
            message.last_sent_s = now_s
            message.sends += 1
        return taken

    def done(
        self, message_key: Hashable, now_s: float, *, retry_after_s: float | None = None
    ) -> None:
        """The send of ``message_key`` has ended, well or not.

        With ``retry_after_s``, a final state whose send failed is offered again, due that
        many seconds from ``now_s`` (unless a newer final has been offered meanwhile).
        Progress is never retried: the next progress or the final supersedes it.
        """
        message = self._messages.get(message_key)
        if message is None or message.sending is None:
            return
        sent, message.sending = message.sending, None
        # The interval counts from when the edit landed, not when it left: a send that
        # took long must not let the next one arrive at Discord right behind it.
        message.last_sent_s = now_s
        if retry_after_s is not None and sent.final and message.pending is None:
            message.pending = dataclasses.replace(sent, attempt=sent.attempt + 1)
            message.ready_since_s = now_s + retry_after_s
        elif sent.final and message.pending is None:
            self._finish(message_key, message.sends)

    def next_due_s(self, now_s: float) -> float | None:
        """When :meth:`take_due` may next return an edit (``now_s`` at the earliest), or
        ``None`` while nothing waits but sends in flight or nothing at all."""
        earliest: float | None = None
        for message in self._messages.values():
            ready_s = self._ready_s(message)
            if ready_s is None:
                continue
            window = self._window(message.channel_id, now_s)
            if len(window) >= self.channel_budget:
                ready_s = max(ready_s, window[-self.channel_budget] + self.channel_window_s)
            earliest = ready_s if earliest is None else min(earliest, ready_s)
        return None if earliest is None else max(earliest, now_s)

    def forget(self, message_key: Hashable) -> None:
        """Drop everything known of the message: what is pending is never sent, a send in
        flight ends unrecorded, and later offers start afresh."""
        self._messages.pop(message_key, None)
        self._finished.pop(message_key, None)

    def drop_progress(self) -> None:
        """Drop every pending progress state, keeping the finals (for a shutdown)."""
        for message in self._messages.values():
            if message.pending is not None and not message.pending.final:
                message.pending = None

    def busy(self) -> bool:
        """Whether any state is pending or any send in flight."""
        return any(m.pending is not None or m.sending is not None for m in self._messages.values())

    def finals_waiting(self) -> int:
        """How many final states are pending or in flight."""
        return sum(
            any(due is not None and due.final for due in (message.pending, message.sending))
            for message in self._messages.values()
        )

    def sent_count(self, message_key: Hashable) -> int:
        """How many sends of the message :meth:`take_due` has handed out (retries count)."""
        message = self._messages.get(message_key)
        return message.sends if message is not None else self._finished.get(message_key, 0)

    def _ready_s(self, message: _Message[T]) -> float | None:
        """When the message's pending state may be sent as far as the message itself goes."""
        if message.pending is None or message.sending is not None:
            return None
        if message.pending.final:
            return message.ready_since_s
        return max(message.ready_since_s, message.last_sent_s + self.interval_s)

    def _window(self, channel_id: int, now_s: float) -> deque[float]:
        """The channel's send starts within the window ending at ``now_s``."""
        window = self._windows.setdefault(channel_id, deque())
        # Same sum as in next_due_s, so that a wake-up at that instant finds room.
        while window and window[0] + self.channel_window_s <= now_s:
            window.popleft()
        return window

    def _finish(self, message_key: Hashable, sends: int) -> None:
        del self._messages[message_key]
        self._finished[message_key] = sends
        while len(self._finished) > self._remember_finished:
            self._finished.popitem(last=False)


class EditPump(Generic[T]):
    """Owns the task that drives an :class:`EditThrottle` and calls ``send`` for each edit.

    Sends run concurrently across messages, so a slow one (discord.py sleeping through a
    429) holds back only its own message. A send that raises is logged and the pump goes
    on; a final state is retried after each of ``final_retry_delays_s`` and logged as an
    error once they are spent. On exit, pending progress is dropped and the pump drains
    for up to ``drain_timeout_s``: finals already offered are still sent; then whatever is
    left is cancelled. Call :meth:`offer` from the event loop's thread.

    ``send`` should swallow what no retry can fix (the message was deleted, access was
    lost), or a final would be retried in vain; discord.py itself already retries 429s
    and 5xx answers inside one call.
    """

    def __init__(
        self,
        throttle: EditThrottle[T],
        send: Callable[[Due[T]], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        *,
        final_retry_delays_s: Sequence[float] = FINAL_RETRY_DELAYS_S,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.throttle = throttle
        self._send = send
        self._clock = clock
        self._retry_delays_s = tuple(final_retry_delays_s)
        self._drain_timeout_s = drain_timeout_s
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def offer(
        self, channel_id: int, message_key: Hashable, state: T, *, final: bool = False
    ) -> None:
        """Offer the newest state of a message (see :meth:`EditThrottle.offer`); progress
        offered once the pump is closing is ignored."""
        if self._closing and not final:
            return
        self.throttle.offer(channel_id, message_key, state, final=final, now_s=self._clock())
        self._wake.set()

    def forget(self, message_key: Hashable) -> None:
        """Drop the message (see :meth:`EditThrottle.forget`)."""
        self.throttle.forget(message_key)

    async def start(self) -> None:
        """Start the task that sends."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="edit-pump")

    async def close(self) -> None:
        """Drop pending progress, drain the finals for up to ``drain_timeout_s``, then
        cancel what is left."""
        self._closing = True
        self.throttle.drop_progress()
        self._wake.set()
        try:
            if self._task is not None:
                async with asyncio.timeout(self._drain_timeout_s):
                    await asyncio.shield(self._task)
        except TimeoutError:
            log.warning("edit_pump_drain_timed_out", finals_lost=self.throttle.finals_waiting())
        finally:
            tasks = [*self._sending, *([self._task] if self._task is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now_s = self._clock()
            for due in self.throttle.take_due(now_s):
                task = asyncio.create_task(self._deliver(due))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            if self._closing and not self.throttle.busy():
                return
            wake_s = self.throttle.next_due_s(now_s)
            delay_s = None if wake_s is None else max(0.0, wake_s - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wake.wait()

    async def _deliver(self, due: Due[T]) -> None:
        retry_after_s: float | None = None
        try:
            await self._send(due)
        except Exception as exc:
            retry_after_s = self._failed(due, exc)
        self.throttle.done(due.message_key, self._clock(), retry_after_s=retry_after_s)
        self._wake.set()

    def _failed(self, due: Due[T], exc: Exception) -> float | None:
        """Log the failed send (from inside its ``except``; a failure that is retried or
        superseded in one line, the final one given up with its traceback); the retry
        delay, if any."""
        fields = {
            "channel_id": due.channel_id,
            "message_key": due.message_key,
            "final": due.final,
            "attempt": due.attempt,
            "error": f"{type(exc).__name__}: {exc}"[:300],
        }
        if not due.final:
            log.warning("edit_failed", **fields)
            return None
        if due.attempt < len(self._retry_delays_s):
            delay_s = self._retry_delays_s[due.attempt]
            log.warning("edit_final_failed_retrying", retry_in_s=delay_s, **fields)
            return delay_s
        log.error("edit_final_lost", **fields, exc_info=True)
        return None
