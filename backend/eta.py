"""When a queued job should start: the work ahead of it over the device time left for it.

A job waits for the queued work that ranks ahead of it (higher lanes, and its own
lane's jobs with earlier fair-queuing tags), for running work it cannot preempt, and
for the higher-lane work that keeps arriving meanwhile. With ``W`` device-seconds
ahead, a device that completes ``g`` device-seconds of solo work per second (``g`` > 1
when batching pays) and higher lanes arriving at ``r`` device-seconds per second,
the wait is ``W / (g - r)``: the M/G/1 priority-queue correction.

Pure, with the time passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from backend.fairness import LANE_ORDER
from backend.models import Lane

WINDOW_S = 600.0
# Never assume the higher lanes leave less than this fraction of the device.
MIN_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class Estimate:
    """Seconds from now until the job starts, and until it finishes."""

    start_in_s: float
    finish_in_s: float


class EtaModel:
    """Recent arrivals per lane and the device's measured throughput."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._arrivals: deque[tuple[float, Lane, float]] = deque()
        self._gain = 1.0

    def record_arrival(self, lane: Lane, cost_s: float, now_s: float) -> None:
        self._arrivals.append((now_s, lane, cost_s))
        self._expire(now_s)

    def record_throughput(self, solo_cost_s: float, busy_s: float) -> None:
        """``solo_cost_s`` of estimated work was completed in ``busy_s`` of device time."""
        if busy_s > 0 and solo_cost_s > 0:
            self._gain += 0.1 * (solo_cost_s / busy_s - self._gain)

    @property
    def gain(self) -> float:
        return self._gain

    def arrival_rate(self, lanes: tuple[Lane, ...], now_s: float) -> float:
        """Device-seconds per second arriving in ``lanes`` over the window."""
        self._expire(now_s)
        if not self._arrivals:
            return 0.0
        span = max(now_s - self._arrivals[0][0], 1.0)
        return sum(cost for _, lane, cost in self._arrivals if lane in lanes) / span

    def estimate(self, lane: Lane, work_ahead_s: float, cost_s: float, now_s: float) -> Estimate:
        higher = LANE_ORDER[: LANE_ORDER.index(lane)]
        rate = self.arrival_rate(higher, now_s) if higher else 0.0
        capacity = max(self._gain - rate, MIN_SHARE * self._gain)
        start = work_ahead_s / capacity
        return Estimate(start, start + cost_s / capacity)

    def _expire(self, now_s: float) -> None:
        while self._arrivals and self._arrivals[0][0] < now_s - self.window_s:
            self._arrivals.popleft()


def work_ahead_s(
    queued_ahead_s: float, running_left_s: float, preemptible: bool, step_s: float
) -> float:
    """The device-seconds a job waits for: the queued work ranked ahead of it, plus the
    running batch's remaining work unless it may preempt that (then about one step)."""
    return queued_ahead_s + (min(step_s, running_left_s) if preemptible else running_left_s)
