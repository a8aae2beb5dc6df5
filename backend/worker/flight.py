"""A job a worker holds, from its claim until it leaves (finished, failed, requeued or
lost): its lease, how that lease is timed, and where the job stands on the device; and
which held jobs give the device up to a more urgent one (pure, by the preemption rules)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from backend.models import Job, JobSpec
from backend.queue.base import Head, Lease
from backend.scheduling.lanes import rows_for
from backend.scheduling.preemption import Candidate, Rules, Running, rank, victims
from backend.worker.leases import LeaseTimer
from backend.worker.ledger.base import Attempt


@dataclass(slots=True)
class Flight:
    """One held job, as its worker tracks it."""

    lease: Lease
    rows: int
    shape: Hashable  # (model, width, height): jobs batch only with their own shape
    timer: LeaseTimer
    started_s: float = field(default_factory=time.monotonic)
    stopping: bool = False  # evicted or cancelled by us; its final event is pending
    lapsed: bool = False  # given up because its lease ran out
    running: bool = False  # in the engine's running batch (not waiting for its shape)
    steps_since_resume: int = 0
    started_seq: int = 0
    done_steps: int = 0

    @property
    def rank(self) -> int:
        """The job's urgency (lower runs first), by its lane."""
        return rank(self.lease.job.lane, aged=False)

    @property
    def attempt(self) -> Attempt:
        """The attempt its lease grants."""
        return Attempt.of(self.lease)

    def as_running(self) -> Running:
        """The job as the preemption rules see a running one."""
        # Every claim after the first follows a preemption (or a lost lease).
        preemptions = self.lease.attempt - 1
        return Running(
            self.lease.job.id,
            self.rank,
            self.rows,
            self.shape,
            self.steps_since_resume,
            preemptions,
            self.started_seq,
            max(0, (self.lease.job.spec.steps or 0) - self.done_steps),
        )


def rows_of(job: Job) -> int:
    """The rows the job takes in a batch (two per guided sample)."""
    return rows_for(job.spec.n, job.spec.guidance)


def shape_of(spec: JobSpec) -> Hashable:
    """What jobs must share to batch: the model and the image size."""
    return (spec.model, spec.width, spec.height)


def victims_for(
    flights: Mapping[str, Flight],
    head: Head | None,
    resolve: Callable[[JobSpec], JobSpec],
    capacity_rows: int,
    rules: Rules,
) -> tuple[str | None, list[str]]:
    """The most urgent job that wants the device (a held one waiting for its shape, or
    the queue's ``head``) and the held jobs to evict for it, by ``rules``."""
    waiting = most_urgent(flights, head, resolve)
    if waiting is None:
        return None, []
    running = [f.as_running() for f in flights.values() if f.running and not f.stopping]
    chosen = victims(waiting, running, capacity_rows, rules)
    if head is not None and waiting.job_id == head.job.id and chosen:
        # Claimed jobs that wait for their shape would take the freed device before the
        # queued job is claimed: less urgent ones go back too.
        chosen += [
            job_id
            for job_id, f in flights.items()
            if not f.running and not f.stopping and f.rank > waiting.rank
        ]
    return waiting.job_id, chosen


def most_urgent(
    flights: Mapping[str, Flight], head: Head | None, resolve: Callable[[JobSpec], JobSpec]
) -> Candidate | None:
    """The most urgent job that wants the device: a held one waiting for its shape, or
    the queue's head (a tie goes to the one already held)."""
    best: Candidate | None = None
    for job_id, flight in flights.items():
        if flight.running or flight.stopping:
            continue
        if best is None or flight.rank < best.rank:
            best = Candidate(job_id, flight.rank, flight.rows, flight.shape)
    if head is not None and head.job.id not in flights:
        job = head.job
        urgency = rank(job.lane, head.aged)
        if best is None or urgency < best.rank:
            best = Candidate(job.id, urgency, rows_of(job), shape_of(resolve(job.spec)))
    return best
