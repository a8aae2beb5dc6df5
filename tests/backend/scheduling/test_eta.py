"""The start-time estimate: work ahead over the device time left for the lane, the
throughput gain measured over device time, and the per-lane correction learned from
the waits that happened."""

from __future__ import annotations

import math

import pytest

from backend.models import Lane
from backend.scheduling.eta import CORRECTION_LIMIT, EtaModel, stalled_slot


def test_an_idle_model_divides_work_ahead_by_the_device() -> None:
    """Without measurements the device does one second of solo work per second."""
    model = EtaModel()
    estimate = model.estimate(Lane.REALTIME, 10.0, 2.0, now_s=0.0)
    assert estimate.start_in_s == pytest.approx(10.0)
    assert estimate.finish_in_s == pytest.approx(12.0)


def test_blocked_time_is_added_before_the_work_ahead() -> None:
    """Time until the device can take the job at all adds to the queued work's time."""
    model = EtaModel()
    assert model.estimate(Lane.BATCH, 4.0, 1.0, 0.0, blocked_s=3.0).start_in_s == 7.0


def test_a_taken_slot_delays_the_start_unless_the_queue_takes_longer() -> None:
    """The job starts after the later of the queue's estimate and the user's slot (its
    wait, then its work at the device's throughput)."""
    model = EtaModel()
    for _ in range(20):
        model.record_throughput(solo_cost_s=2.0, busy_s=1.0)  # a gain of 2
    slot = {"slot_wait_s": 30.0, "slot_work_s": 8.0}
    assert model.estimate(Lane.REALTIME, 10.0, 2.0, 0.0, **slot).start_in_s == pytest.approx(34.0)
    assert model.estimate(Lane.REALTIME, 100.0, 2.0, 0.0, **slot).start_in_s == pytest.approx(50.0)
    assert model.estimate(Lane.REALTIME, 10.0, 2.0, 0.0, **slot).finish_in_s == pytest.approx(35.0)


@pytest.mark.parametrize(
    ("stalled", "cap", "expected"),
    [
        ([], 1, (0.0, 0.0)),
        ([5.0], 1, (60.0, 5.0)),
        ([5.0, 7.0], 1, (60.0, 12.0)),
        ([5.0, 7.0], 2, (60.0, 5.0)),
        ([5.0], 2, (0.0, 0.0)),
        ([5.0, 7.0], 0, (0.0, 0.0)),
    ],
)
def test_stalled_leases_block_only_beyond_the_cap(
    stalled: list[float], cap: int, expected: tuple[float, float]
) -> None:
    """A user under their cap once the live jobs finish waits for no lease; otherwise
    for the whole lease and the oldest stalled jobs' reruns, as many as keep the cap
    full."""
    assert stalled_slot(stalled, cap, lease_s=60.0) == expected


def test_gain_is_weighted_by_device_time_not_by_steps() -> None:
    """Many short batched steps do not outvote one long step of the same device time."""
    model = EtaModel()
    for _ in range(100):
        model.record_throughput(solo_cost_s=0.04, busy_s=0.01)  # 4x over 1 s in all
    model.record_throughput(solo_cost_s=1.0, busy_s=1.0)  # 1x over 1 s
    assert model.gain == pytest.approx(2.5, rel=0.02)
    assert model.estimate(Lane.REALTIME, 10.0, 0.0, 0.0).start_in_s == pytest.approx(4.0, 0.02)


def test_higher_lane_arrivals_slow_a_lower_lane() -> None:
    """Higher-lane work arriving at half the device's rate doubles a batch job's wait."""
    model = EtaModel(window_s=100.0)
    for second in range(101):
        model.record_arrival(Lane.REALTIME, 0.5, float(second))
    assert model.arrival_rate((Lane.REALTIME,), 100.0) == pytest.approx(0.5, rel=0.02)
    batch = model.estimate(Lane.BATCH, 10.0, 0.0, 100.0).start_in_s
    realtime = model.estimate(Lane.REALTIME, 10.0, 0.0, 100.0).start_in_s
    assert realtime == pytest.approx(10.0)
    assert batch == pytest.approx(20.0, rel=0.03)


def test_correction_learns_a_lanes_bias_and_stays_bounded() -> None:
    """Waits that keep coming out at twice the estimate double that lane's estimates,
    not another lane's; the factor never passes its limit."""
    model = EtaModel()
    for _ in range(300):
        model.record_start(Lane.BATCH, estimated_s=20.0, actual_s=40.5)
    assert model.correction(Lane.BATCH) == pytest.approx(2.0, rel=0.02)
    assert model.correction(Lane.REALTIME) == 1.0
    assert model.estimate(Lane.BATCH, 10.0, 0.0, 0.0).start_in_s == pytest.approx(20.0, 0.02)
    for _ in range(1000):
        model.record_start(Lane.BACKGROUND, estimated_s=0.0, actual_s=1e6)
    assert model.correction(Lane.BACKGROUND) == pytest.approx(CORRECTION_LIMIT)
    model.record_start(Lane.REALTIME, estimated_s=-1.0, actual_s=5.0)
    assert math.isclose(model.correction(Lane.REALTIME), 1.0)
