"""When a worker renews a lease and when it gives the job up, on its own clock: a
renewal every third of the lease, failed ones retried with a backoff while the lease
lasts, and the job given up only once the lease has lapsed."""

from __future__ import annotations

import math

from backend.worker.leases import RETRY_FIRST_S, LeaseTimer, renew_every_s


def test_a_healthy_lease_is_renewed_every_third_of_it() -> None:
    """A renewal is due a third of the lease after the claim was sent, and again a third
    after each accepted renewal was sent."""
    timer = LeaseTimer.start(sent_s=100.0, lease_s=30.0)
    assert not timer.is_due(109.9) and timer.is_due(110.0)
    timer.renewed(sent_s=110.5)
    assert timer.good_until_s == 140.5
    assert not timer.is_due(120.4) and timer.is_due(120.5)


def test_failed_renewals_back_off_and_retry_while_the_lease_lasts() -> None:
    """Each failure in a row doubles the wait before the next try (never past the
    regular interval), and the lease is kept until it has run out."""
    timer = LeaseTimer.start(sent_s=0.0, lease_s=30.0)
    waits = []
    now_s = 5.0
    while timer.failed(now_s):
        waits.append(round(timer.due_s - now_s, 6))
        now_s = timer.due_s
    assert waits[:3] == [RETRY_FIRST_S, 2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S]
    assert max(waits) == renew_every_s(30.0)
    # The last try is at the lease's very end: the lapse is noticed when it comes.
    assert now_s == 30.0 and timer.lapsed(now_s) and timer.due_s == math.inf


def test_one_success_after_failures_restores_the_lease() -> None:
    """A renewal accepted after failures resets the backoff and the lease's end."""
    timer = LeaseTimer.start(sent_s=0.0, lease_s=3.0)
    assert timer.failed(1.0) and timer.failed(1.1)
    timer.renewed(sent_s=2.5)
    assert timer.failures == 0 and timer.remaining_s(2.5) == 3.0
    assert timer.failed(5.4) and not timer.lapsed(5.4)


def test_a_renewal_call_may_wait_only_for_what_is_left_of_the_lease() -> None:
    """A renewal sent late in the lease waits no longer than the lease lasts (but a
    little, even at its very end)."""
    timer = LeaseTimer.start(sent_s=0.0, lease_s=3.0)
    assert timer.call_timeout_s(1.0) == 2.0
    assert 0 < timer.call_timeout_s(3.5) < 0.1
