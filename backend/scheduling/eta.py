"""When a queued job should start: the work ahead of it over the device time left for it.

A job waits for the running batch unless it may join or preempt it, then for the
queued work that ranks ahead of it (higher lanes, and its own lane's jobs with earlier
fair-queuing tags), and for the higher-lane work that keeps arriving meanwhile. With
``W`` device-seconds ahead, a device that completes ``g`` device-seconds of solo work
per second (``g`` > 1 when batching pays) and higher lanes arriving at ``r``
device-seconds per second, the wait is ``W / (g - r)``: the M/G/1 priority-queue
correction.

The throughput gain is measured over device time, not per step: a second of short
batched steps and a second of one long step weigh the same. What the formula leaves
out (batching of the work ahead, jobs that jump the queue by fair-queuing tags,
preemptions) shows up as a bias per lane, which the model learns from the waits that
happened: each started job's actual over estimated wait feeds a per-lane correction.

A user at their running cap waits for a slot as well. A slot held by a lease that
nobody renews (its worker died) frees only when the lease ends, and the job it held
then runs again ahead of the user's later jobs: the start is the later of the queue's
estimate and that (see :func:`stalled_slot`).

Pure, with the time passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backend.models import Lane
from backend.scheduling.fairness import LANE_ORDER

WINDOW_S = 600.0
# Never assume the higher lanes leave less than this fraction of the device.
MIN_SHARE = 0.05
# Device-seconds over which the throughput gain forgets (exponential decay).
GAIN_HORIZON_S = 120.0
# Weight of each started job in the per-lane correction (an EWMA of log ratios).
CORRECTION_ALPHA = 0.05
# Waits this short are scheduling noise (a batch window, a step): added to both sides
# of the ratio so they neither teach the correction much nor dominate it.
CORRECTION_FLOOR_S = 0.5
# The correction stays within this factor either way.
CORRECTION_LIMIT = 10.0


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
        # Decayed sums of solo work completed and device time spent on it.
        self._solo_s = 0.0
        self._busy_s = 0.0
        self._log_correction = dict.fromkeys(LANE_ORDER, 0.0)

    def record_arrival(self, lane: Lane, cost_s: float, now_s: float) -> None:
        """A job of ``cost_s`` solo device-seconds joined ``lane`` at ``now_s``."""
        self._arrivals.append((now_s, lane, cost_s))
        self._expire(now_s)

    def record_throughput(self, solo_cost_s: float, busy_s: float) -> None:
        """``solo_cost_s`` of estimated work was completed in ``busy_s`` of device time."""
        if busy_s <= 0 or solo_cost_s <= 0:
            return
        keep = math.exp(-busy_s / GAIN_HORIZON_S)
        self._solo_s = self._solo_s * keep + solo_cost_s
        self._busy_s = self._busy_s * keep + busy_s

    def record_start(self, lane: Lane, estimated_s: float, actual_s: float) -> None:
        """A job of ``lane`` started after ``actual_s``; ``estimated_s`` was predicted."""
        if estimated_s < 0 or actual_s < 0:
            return
        ratio = (actual_s + CORRECTION_FLOOR_S) / (estimated_s + CORRECTION_FLOOR_S)
        current = self._log_correction[lane]
        limit = math.log(CORRECTION_LIMIT)
        updated = current + CORRECTION_ALPHA * (math.log(ratio) - current)
        self._log_correction[lane] = max(-limit, min(limit, updated))

    @property
    def gain(self) -> float:
        """Solo device-seconds of work completed per second of device time (1 until
        measured)."""
        return self._solo_s / self._busy_s if self._busy_s > 0 else 1.0

    def correction(self, lane: Lane) -> float:
        """The learned factor on ``lane``'s estimates (1 until jobs have started)."""
        return math.exp(self._log_correction[lane])

    def arrival_rate(self, lanes: tuple[Lane, ...], now_s: float) -> float:
        """Device-seconds per second arriving in ``lanes`` over the window."""
        self._expire(now_s)
        if not self._arrivals:
            return 0.0
        span = max(now_s - self._arrivals[0][0], 1.0)
        return sum(cost for _, lane, cost in self._arrivals if lane in lanes) / span

    def estimate(
        self,
        lane: Lane,
        work_ahead_s: float,
        cost_s: float,
        now_s: float,
        *,
        blocked_s: float = 0.0,
        slot_wait_s: float = 0.0,
        slot_work_s: float = 0.0,
    ) -> Estimate:
        """From ``work_ahead_s`` of queued solo work ranked ahead of the job,
        ``blocked_s`` until the device can take it at all, and the user's running slot:
        free only after ``slot_wait_s``, then after ``slot_work_s`` of the user's own
        solo work (see :func:`stalled_slot`)."""
        higher = LANE_ORDER[: LANE_ORDER.index(lane)]
        rate = self.arrival_rate(higher, now_s) if higher else 0.0
        gain = self.gain
        capacity = max(gain - rate, MIN_SHARE * gain)
        queued = (blocked_s + work_ahead_s / capacity) * self.correction(lane)
        start = max(queued, slot_wait_s + slot_work_s / capacity)
        return Estimate(start, start + cost_s / capacity)

    def _expire(self, now_s: float) -> None:
        while self._arrivals and self._arrivals[0][0] < now_s - self.window_s:
            self._arrivals.popleft()


def queued_ahead_s(
    lane: Lane, position: int, queued_cost_s: Mapping[Lane, float], depth: int
) -> float:
    """The queued solo work ranked ahead of the job at ``position`` (0-based) of
    ``lane``'s ``depth`` jobs: every higher lane's, and ``position`` of its own lane's
    mean job. What any queue backend can answer, from its position and totals."""
    own = LANE_ORDER.index(lane)
    ahead = sum(queued_cost_s.get(higher, 0.0) for higher in LANE_ORDER[:own])
    if depth > 0 and position > 0:
        ahead += position * queued_cost_s.get(lane, 0.0) / depth
    return ahead


def stalled_slot(stalled_cost_s: Sequence[float], cap: int, lease_s: float) -> tuple[float, float]:
    """How long leases that nobody renews keep a user from a running slot: the seconds
    until they end, and the solo work of the stalled jobs that must run again and finish
    first. ``stalled_cost_s`` holds the costs of the user's leased jobs that no live
    worker is known to hold, oldest first (they rank ahead of the user's later jobs);
    ``cap`` is the user's running cap (0 or less: none).

    The user's other leased jobs are running and free their slots as they finish, so
    only stalled ones beyond ``cap - 1`` block. When a stalled lease was last renewed is
    unknown, so the whole ``lease_s`` is counted: (0, 0) when nothing blocks.
    """
    blocking = len(stalled_cost_s) - cap + 1
    if cap <= 0 or blocking <= 0:
        return 0.0, 0.0
    return lease_s, sum(stalled_cost_s[:blocking])
