"""When a worker renews a lease it holds, and when it gives the job up, timed by its own
monotonic clock: pure policy, no queue and no loop.

A lease is good for ``lease_s`` from the moment its claim or last renewal was *sent*
(the queue started the lease no earlier), so the worker's view errs on the short side.
A renewal is due every third of the lease. One that fails for a reason that may pass
(the queue unreachable, a timeout) is retried with a doubling backoff while the lease
lasts; the job is given up only once the lease has lapsed by this clock, or the queue
says another claim holds it (which the worker learns from the error, not from here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A failed renewal is retried after this, doubling with each failure in a row (never
# later than the regular renewal would have been).
RETRY_FIRST_S = 0.05
# A renewal call waits at least this long for its answer, even in a lease's last moments.
MIN_CALL_S = 0.05


def renew_every_s(lease_s: float) -> float:
    """Seconds between renewals of a healthy lease: a third of it, so two may fail."""
    return max(lease_s / 3, 0.01)


@dataclass(slots=True)
class LeaseTimer:
    """One held lease, as this worker times it (monotonic seconds)."""

    lease_s: float
    good_until_s: float
    due_s: float
    failures: int = 0

    @classmethod
    def start(cls, sent_s: float, lease_s: float) -> LeaseTimer:
        """The timer of a lease whose claim was sent at ``sent_s``."""
        return cls(lease_s, sent_s + lease_s, sent_s + renew_every_s(lease_s))

    def is_due(self, now_s: float) -> bool:
        """Whether a renewal should be sent now."""
        return now_s >= self.due_s

    def call_timeout_s(self, now_s: float) -> float:
        """How long a renewal sent now may wait for its answer: what is left of the lease."""
        return max(self.good_until_s - now_s, MIN_CALL_S)

    def renewed(self, sent_s: float) -> None:
        """A renewal sent at ``sent_s`` was accepted."""
        self.good_until_s = sent_s + self.lease_s
        self.due_s = sent_s + renew_every_s(self.lease_s)
        self.failures = 0

    def failed(self, now_s: float) -> bool:
        """A renewal failed for a reason that may pass. Schedules the retry and returns
        True while the lease lasts; False once it has lapsed (give the job up)."""
        self.failures += 1
        if now_s >= self.good_until_s:
            self.due_s = math.inf
            return False
        backoff_s = min(RETRY_FIRST_S * 2 ** (self.failures - 1), renew_every_s(self.lease_s))
        # The last try falls on the lease's end, so that a lapse is noticed when it comes.
        self.due_s = min(now_s + backoff_s, self.good_until_s)
        return True

    def lapsed(self, now_s: float) -> bool:
        """Whether the lease has run out by this clock."""
        return now_s >= self.good_until_s

    def remaining_s(self, now_s: float) -> float:
        """Seconds the lease has left by this clock (0 once lapsed)."""
        return max(self.good_until_s - now_s, 0.0)

    def stop(self) -> None:
        """No more renewals (the job is being given up)."""
        self.due_s = math.inf
