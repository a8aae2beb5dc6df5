"""Edit throttling: coalescing, the per-message interval, the channel budget, finals, and
the pump that sends concurrently, survives failed sends, retries finals and drains on exit.

The pure throttle runs on plain float instants; the pump on the real clock with short
intervals, synchronised on events, never on sleeps."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from collections.abc import Hashable, MutableMapping
from typing import Any

import pytest

from bot.throttle import Due, EditPump, EditThrottle

CHANNEL = 1


def states(dues: list[Due[Any]]) -> list[tuple[Hashable, Any]]:
    return [(due.message_key, due.state) for due in dues]


def assert_window(times: list[float], budget: int, window_s: float) -> None:
    """No `budget + 1` sends fall within any window of `window_s`."""
    times = sorted(times)
    for first, later in zip(times, times[budget:], strict=False):
        assert later - first >= window_s - 1e-9, (first, later)


# --------------------------------------------------------------------------- pure core


def test_offers_within_an_interval_coalesce_into_one_send_of_the_newest() -> None:
    """The first state goes at once; ten more within the interval become one send of the last."""
    throttle: EditThrottle[int] = EditThrottle(interval_s=3.0)
    throttle.offer(CHANNEL, "m", 0, now_s=0.0)
    sent = states(throttle.take_due(0.0))
    throttle.done("m", 0.1)
    for step in range(1, 11):
        throttle.offer(CHANNEL, "m", step, now_s=0.2 * step)
        sent += states(throttle.take_due(0.2 * step))
    sent += states(throttle.take_due(3.1))
    assert sent == [("m", 0), ("m", 10)]
    assert throttle.sent_count("m") == 2


def test_a_message_is_edited_at_most_once_per_interval() -> None:
    """The next edit is due exactly one interval after the last send ended (landed), so
    a slow send never lets the next one arrive right behind it."""
    throttle: EditThrottle[str] = EditThrottle(interval_s=3.0)
    throttle.offer(CHANNEL, "m", "a", now_s=10.0)
    assert states(throttle.take_due(10.0)) == [("m", "a")]
    throttle.done("m", 10.5)
    throttle.offer(CHANNEL, "m", "b", now_s=11.0)
    assert throttle.take_due(13.499) == []
    assert throttle.next_due_s(12.0) == 13.5
    assert states(throttle.take_due(13.5)) == [("m", "b")]


def test_a_message_has_one_send_in_flight_at_a_time() -> None:
    """Past its interval, a message still waits for its send in flight to end."""
    throttle: EditThrottle[str] = EditThrottle(interval_s=1.0)
    throttle.offer(CHANNEL, "m", "a", now_s=0.0)
    throttle.take_due(0.0)
    throttle.offer(CHANNEL, "m", "b", now_s=0.5)
    assert throttle.take_due(5.0) == [] and throttle.next_due_s(5.0) is None
    throttle.done("m", 6.0)
    assert throttle.take_due(6.5) == [] and throttle.next_due_s(6.0) == 7.0
    assert states(throttle.take_due(7.0)) == [("m", "b")]


def test_the_channel_budget_holds_over_many_messages_in_longest_waiting_order() -> None:
    """Twelve messages in one channel: five per window, oldest offers first; others unaffected."""
    throttle: EditThrottle[int] = EditThrottle(channel_budget=5, channel_window_s=5.0)
    for index in reversed(range(12)):
        throttle.offer(CHANNEL, f"m{index}", index, now_s=1.1 - 0.1 * index)
    throttle.offer(2, "elsewhere", 0, now_s=1.1)
    first = states(throttle.take_due(1.2))
    assert first == [(f"m{i}", i) for i in range(11, 6, -1)] + [("elsewhere", 0)]
    assert throttle.next_due_s(1.2) == pytest.approx(6.2)
    assert throttle.take_due(6.1) == []
    assert states(throttle.take_due(6.2)) == [(f"m{i}", i) for i in range(6, 1, -1)]
    assert states(throttle.take_due(11.2)) == [("m1", 1), ("m0", 0)]


def test_the_sliding_window_frees_one_slot_per_expired_send() -> None:
    """Sends spread over the window free their slots one by one, not all at once."""
    throttle: EditThrottle[int] = EditThrottle(interval_s=0.0, channel_budget=2)
    throttle.offer(CHANNEL, "a", 0, now_s=0.0)
    throttle.take_due(0.0)
    throttle.offer(CHANNEL, "b", 0, now_s=1.0)
    throttle.take_due(1.0)
    throttle.offer(CHANNEL, "c", 0, now_s=1.0)
    throttle.offer(CHANNEL, "d", 0, now_s=1.0)
    assert throttle.next_due_s(1.0) == 5.0
    assert states(throttle.take_due(5.0)) == [("c", 0)]
    assert throttle.next_due_s(5.0) == 6.0


def test_a_final_skips_the_interval_but_waits_for_the_send_in_flight() -> None:
    """A final goes at once after a progress edit, but never beside one still in flight."""
    throttle: EditThrottle[str] = EditThrottle(interval_s=3.0)
    throttle.offer(CHANNEL, "m", "progress", now_s=0.0)
    throttle.take_due(0.0)
    throttle.offer(CHANNEL, "m", "result", final=True, now_s=0.5)
    assert throttle.take_due(0.5) == [] and throttle.next_due_s(0.5) is None
    throttle.done("m", 0.7)
    assert throttle.take_due(0.7) == [Due(CHANNEL, "m", "result", final=True)]


def test_finals_go_before_progress_in_the_channel_budget() -> None:
    """When the channel frees a slot, a final offered last goes before older progress."""
    throttle: EditThrottle[str] = EditThrottle(channel_budget=1, channel_window_s=5.0)
    throttle.offer(CHANNEL, "busy", "p", now_s=0.0)
    throttle.take_due(0.0)
    throttle.offer(CHANNEL, "old", "p", now_s=0.1)
    throttle.offer(CHANNEL, "new", "done", final=True, now_s=4.0)
    assert throttle.take_due(4.9) == []
    assert states(throttle.take_due(5.0)) == [("new", "done")]
    assert states(throttle.take_due(10.0)) == [("old", "p")]


def test_progress_after_a_final_is_ignored_and_pending_progress_dropped() -> None:
    """A final replaces pending progress; later progress, before or after it is sent, is
    ignored, while a newer final still replaces one not yet sent."""
    throttle: EditThrottle[str] = EditThrottle(interval_s=3.0)
    throttle.offer(CHANNEL, "m", "p1", now_s=0.0)
    throttle.take_due(0.0)
    throttle.done("m", 0.1)
    throttle.offer(CHANNEL, "m", "p2", now_s=0.2)
    throttle.offer(CHANNEL, "m", "failed", final=True, now_s=0.3)
    throttle.offer(CHANNEL, "m", "p3", now_s=0.4)
    throttle.offer(CHANNEL, "m", "cancelled", final=True, now_s=0.5)
    assert states(throttle.take_due(0.5)) == [("m", "cancelled")]
    throttle.offer(CHANNEL, "m", "p4", now_s=0.6)
    throttle.done("m", 0.7)
    throttle.offer(CHANNEL, "m", "p5", now_s=10.0)
    assert throttle.take_due(10.0) == [] and not throttle.busy()
    assert throttle.sent_count("m") == 2


def test_forget_drops_pending_state_and_an_unfinished_send() -> None:
    """A forgotten message sends nothing more, its send in flight ends quietly, and a new
    offer under its key starts afresh."""
    throttle: EditThrottle[str] = EditThrottle(interval_s=3.0)
    throttle.offer(CHANNEL, "m", "a", now_s=0.0)
    throttle.take_due(0.0)
    throttle.offer(CHANNEL, "m", "b", final=True, now_s=0.1)
    throttle.forget("m")
    throttle.done("m", 0.2)
    assert throttle.take_due(1.0) == [] and not throttle.busy()
    assert throttle.sent_count("m") == 0
    throttle.offer(CHANNEL, "m", "c", now_s=1.0)
    assert states(throttle.take_due(1.0)) == [("m", "c")]


def test_a_failed_final_is_offered_again_after_the_retry_delay() -> None:
    """`done` with a retry delay puts the final back, due after the delay, one attempt on."""
    throttle: EditThrottle[str] = EditThrottle()
    throttle.offer(CHANNEL, "m", "result", final=True, now_s=0.0)
    throttle.take_due(0.0)
    throttle.done("m", 1.0, retry_after_s=2.0)
    assert throttle.take_due(2.9) == [] and throttle.next_due_s(1.0) == 3.0
    assert throttle.take_due(3.0) == [Due(CHANNEL, "m", "result", final=True, attempt=1)]
    throttle.done("m", 3.5)
    assert not throttle.busy() and throttle.finals_waiting() == 0


def test_a_failed_progress_send_is_not_retried() -> None:
    """Progress is superseded, never retried, even when a retry delay is passed."""
    throttle: EditThrottle[str] = EditThrottle(interval_s=0.0)
    throttle.offer(CHANNEL, "m", "p", now_s=0.0)
    throttle.take_due(0.0)
    throttle.done("m", 0.5, retry_after_s=1.0)
    assert throttle.take_due(5.0) == [] and not throttle.busy()


def test_drop_progress_keeps_the_finals() -> None:
    """On shutdown, pending progress goes and pending finals stay."""
    throttle: EditThrottle[str] = EditThrottle(channel_budget=1)
    throttle.offer(CHANNEL, "a", "p", now_s=0.0)
    throttle.offer(CHANNEL, "b", "p", now_s=0.0)
    throttle.offer(CHANNEL, "c", "done", final=True, now_s=0.0)
    throttle.drop_progress()
    assert states(throttle.take_due(0.0)) == [("c", "done")]
    assert throttle.take_due(100.0) == []


@pytest.mark.parametrize(
    "arguments",
    [
        {"interval_s": -1.0},
        {"channel_budget": 0},
        {"channel_window_s": 0.0},
    ],
)
def test_a_throttle_that_could_never_send_is_refused(arguments: dict[str, float]) -> None:
    """Negative intervals, empty budgets and empty windows are programming errors."""
    with pytest.raises(ValueError, match="edit throttle needs"):
        EditThrottle(**arguments)  # type: ignore[arg-type]


def test_fifty_busy_messages_in_one_channel_never_break_the_limits() -> None:
    """50 messages offered progress every 0.1 s for a minute, sends taking up to 1.5 s, then
    finals: no channel window holds more than the budget, no message is edited twice within
    its interval, every message gets progress edits, and each ends on its final, sent once."""
    rng = random.Random(3)
    throttle: EditThrottle[tuple[str, int]] = EditThrottle()
    keys = [f"job{index}" for index in range(50)]
    sends: dict[str, list[tuple[float, tuple[str, int]]]] = defaultdict(list)
    in_flight: dict[str, float] = {}
    for tick in range(1, 1_200):
        now_s = tick / 10
        for key, ends_s in list(in_flight.items()):
            if ends_s <= now_s:
                throttle.done(key, now_s)
                del in_flight[key]
        for key in keys:
            if tick < 600:
                throttle.offer(CHANNEL, key, ("progress", tick), now_s=now_s)
            elif tick == 600 + keys.index(key):
                throttle.offer(CHANNEL, key, ("final", tick), final=True, now_s=now_s)
        for due in throttle.take_due(now_s):
            sends[str(due.message_key)].append((now_s, due.state))
            in_flight[str(due.message_key)] = now_s + rng.uniform(0.0, 1.5)
        wake_s = throttle.next_due_s(now_s)
        assert wake_s is None or wake_s > now_s, "something due was left behind"
    assert_window([when for key in keys for when, _ in sends[key]], 5, 5.0)
    for key in keys:
        progress = [when for when, (kind, _) in sends[key] if kind == "progress"]
        assert progress and all(b - a >= 3.0 - 1e-9 for a, b in itertools.pairwise(progress))
        assert [kind for _, (kind, _) in sends[key]].count("final") == 1
        assert sends[key][-1][1][0] == "final"
    assert not throttle.busy()


# --------------------------------------------------------------------------- the pump


class Recorder:
    """A fake send: records each edit, can hold a message's sends on a gate and can fail a
    message's next sends; `seen(key, state)` is awaited instead of sleeping."""

    def __init__(self) -> None:
        self.sent: list[Due[Any]] = []
        self.gates: dict[Hashable, asyncio.Event] = {}
        self.failures: dict[Hashable, int] = defaultdict(int)
        self._changed = asyncio.Event()

    async def __call__(self, due: Due[Any]) -> None:
        self.sent.append(due)
        self._changed.set()
        gate = self.gates.get(due.message_key)
        if gate is not None:
            await gate.wait()
        if self.failures[due.message_key] > 0:
            self.failures[due.message_key] -= 1
            raise ConnectionError(f"edit of {due.message_key} failed")

    def states(self, key: Hashable) -> list[Any]:
        return [due.state for due in self.sent if due.message_key == key]

    async def seen(self, key: Hashable, state: Any, times: int = 1) -> None:
        while self.states(key).count(state) < times:
            self._changed.clear()
            await self._changed.wait()


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_the_pump_sends_offers_and_coalesces_while_a_send_is_in_flight() -> None:
    """Offers made while a message's send is held are coalesced into one send of the newest."""
    send = Recorder()
    send.gates["m"] = asyncio.Event()
    async with EditPump(EditThrottle[int](interval_s=0.0), send) as pump:
        pump.offer(CHANNEL, "m", 0)
        await send.seen("m", 0)
        for state in range(1, 11):
            pump.offer(CHANNEL, "m", state)
        send.gates["m"].set()
        await send.seen("m", 10)
        pump.offer(CHANNEL, "m", 11, final=True)
        await send.seen("m", 11)
    assert send.states("m") == [0, 10, 11]


async def test_a_slow_send_holds_back_only_its_own_message() -> None:
    """While one message's send hangs, another message in the same channel is edited."""
    send = Recorder()
    send.gates["slow"] = asyncio.Event()
    async with EditPump(EditThrottle[str](), send) as pump:
        pump.offer(CHANNEL, "slow", "p")
        await send.seen("slow", "p")
        pump.offer(CHANNEL, "fast", "done", final=True)
        await send.seen("fast", "done")
        assert not send.gates["slow"].is_set()
        send.gates["slow"].set()


async def test_a_send_that_raises_is_logged_and_the_pump_goes_on(
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A failing progress edit is logged as a warning and not retried; other edits go on."""
    send = Recorder()
    send.failures["bad"] = 1
    throttle = EditThrottle[str](interval_s=0.0)
    async with EditPump(throttle, send) as pump:
        pump.offer(CHANNEL, "bad", "p")
        await send.seen("bad", "p")
        pump.offer(CHANNEL, "good", "p")
        await send.seen("good", "p")
        pump.offer(CHANNEL, "bad", "p2")
        await send.seen("bad", "p2")
    assert send.states("bad") == ["p", "p2"] and send.states("good") == ["p"]
    [failed] = events(logs, "edit_failed")
    assert failed["log_level"] == "warning" and failed["message_key"] == "bad"
    assert failed["final"] is False and "ConnectionError" in failed["error"]


async def test_a_final_that_raises_twice_is_retried_and_lands(
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A final whose send fails twice is retried after growing delays and sent on try three."""
    send = Recorder()
    send.failures["m"] = 2
    pump = EditPump(EditThrottle[str](), send, final_retry_delays_s=(0.01, 0.02, 0.04))
    async with pump:
        pump.offer(CHANNEL, "m", "result", final=True)
        await send.seen("m", "result", times=3)
    assert [due.attempt for due in send.sent] == [0, 1, 2]
    retries = events(logs, "edit_final_failed_retrying")
    assert [entry["retry_in_s"] for entry in retries] == [0.01, 0.02]
    assert not events(logs, "edit_final_lost") and pump.throttle.sent_count("m") == 3


async def test_a_final_that_keeps_failing_is_given_up_as_an_error(
    logs: list[MutableMapping[str, Any]],
) -> None:
    """After the last retry delay is spent, the final is logged as an error and dropped."""
    send = Recorder()
    send.failures["m"] = 10
    pump = EditPump(EditThrottle[str](), send, final_retry_delays_s=(0.0, 0.01))
    async with pump:
        pump.offer(CHANNEL, "m", "result", final=True)
        await send.seen("m", "result", times=3)
    [lost] = events(logs, "edit_final_lost")
    assert lost["log_level"] == "error" and lost["attempt"] == 2
    assert len(send.sent) == 3 and not pump.throttle.busy()


async def test_leaving_the_pump_sends_a_pending_final_and_drops_progress() -> None:
    """On exit, a final still waiting for the channel budget is sent; progress is not."""
    send = Recorder()
    throttle = EditThrottle[str](interval_s=0.0, channel_budget=1, channel_window_s=0.05)
    async with EditPump(throttle, send) as pump:
        pump.offer(CHANNEL, "first", "p")
        await send.seen("first", "p")
        pump.offer(CHANNEL, "other", "p")
        pump.offer(CHANNEL, "job", "result", final=True)
        pump.offer(CHANNEL, "later", "p")
    assert [due.message_key for due in send.sent] == ["first", "job"]
    assert not throttle.busy()


async def test_leaving_the_pump_gives_up_a_hung_final_after_the_drain_timeout(
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A final whose send never ends holds the exit only for the drain timeout, then is
    cancelled and reported."""
    send = Recorder()
    send.gates["m"] = asyncio.Event()
    async with EditPump(EditThrottle[str](), send, drain_timeout_s=0.05) as pump:
        pump.offer(CHANNEL, "m", "result", final=True)
        await send.seen("m", "result")
    [timed_out] = events(logs, "edit_pump_drain_timed_out")
    assert timed_out["finals_lost"] == 1


async def test_progress_offered_to_a_closing_pump_is_ignored() -> None:
    """Once the pump is closing, only finals are still accepted."""
    send = Recorder()
    throttle = EditThrottle[str]()
    pump = EditPump(throttle, send)
    await pump.start()
    await pump.close()
    pump.offer(CHANNEL, "m", "p")
    assert not throttle.busy() and send.sent == []
