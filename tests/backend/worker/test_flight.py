"""Which held or queued job wants the device most (``most_urgent``)."""

from __future__ import annotations

from backend.models import Job, JobSpec, Lane
from backend.queue.base import Head, Lease
from backend.scheduling.preemption import Rules
from backend.worker.flight import Flight, most_urgent
from backend.worker.leases import LeaseTimer

RULES = Rules(enabled=True, min_steps=1, max_per_job=10, size_ratio=4.0, pause_ratio=1.0)


def job(job_id: str, lane: Lane, cost_s: float, steps: int = 10) -> Job:
    spec = JobSpec(prompt=job_id, seed=1, width=64, height=64, n=1, steps=steps)
    return Job(id=job_id, spec=spec, user_id=1, tier="free", lane=lane, cost_s=cost_s)


def paused(job_id: str, lane: Lane, cost_s: float, done_steps: int) -> Flight:
    lease = Lease(job(job_id, lane, cost_s), "w", "t", 1, 0)
    flight = Flight(lease, 2, ("m", 64, 64), LeaseTimer.start(0.0, 60.0), paused=True)
    flight.done_steps = done_steps
    return flight


def test_aged_work_starts_before_a_paused_job_only_if_smaller() -> None:
    """A paused realtime job with 2 s left: a queued realtime job of 1 s goes first (less
    work); a queued 10 s batch job does not, aged or not (a paused job has waited too,
    and counts as aged against aged work); an aged 1 s one does."""
    flights = {"p": paused("p", Lane.REALTIME, 10.0, done_steps=8)}  # 2 s left
    assert flights["p"].remaining_s == 2.0

    def winner(head: Head) -> str | None:
        found = most_urgent(flights, head, lambda spec: spec, RULES)
        return None if found is None else found.job_id

    assert winner(Head(job("small", Lane.REALTIME, 1.0), aged=False)) == "small"
    assert winner(Head(job("big", Lane.BATCH, 10.0), aged=False)) == "p"
    assert winner(Head(job("big", Lane.BATCH, 10.0), aged=True)) == "p"
    assert winner(Head(job("small", Lane.BATCH, 1.0), aged=True)) == "small"
    # A realtime job still goes before a paused batch job whatever their sizes.
    flights = {"p": paused("p", Lane.BATCH, 10.0, done_steps=8)}
    assert winner(Head(job("rt", Lane.REALTIME, 5.0), aged=False)) == "rt"
