"""A job a worker holds, from its claim until it leaves (finished, failed, requeued or
lost): its lease, how that lease is timed, and where the job stands on the device; and
which held jobs give the device up to a more urgent one, paused in place or evicted
(pure, by the preemption rules)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from backend.models import Job, JobSpec
from backend.queue.base import Head, Lease
from backend.scheduling.lanes import rows_for
from backend.scheduling.preemption import Candidate, Plan, Rules, Running, rank, victims, yields
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
    paused: bool = False  # set aside on the device by a pause, its state kept there
    pausing: bool = False  # asked to pause; its PAUSED event is pending
    counted_out: bool = False  # the queue counts it out of its user's running cap
    steps_since_resume: int = 0
    started_seq: int = 0
    done_steps: int = 0

    @property
    def rank(self) -> int:
        """The job's urgency (lower runs first), by its lane."""
        return rank(self.lease.job.lane, aged=False)

    @property
    def remaining_s(self) -> float:
        """Estimated device-seconds of work the job has left, running alone."""
        job = self.lease.job
        steps = job.spec.steps or 0
        if steps <= 0:
            return job.cost_s
        return job.cost_s * max(0, steps - self.done_steps) / steps

    @property
    def waiting(self) -> bool:
        """Held and wanting the device: claimed and waiting for its shape, or paused."""
        return not self.running and not self.stopping and not self.pausing

    def as_candidate(self) -> Candidate:
        """The job as the preemption rules see a waiting one."""
        return Candidate(self.lease.job.id, self.rank, self.rows, self.shape, self.remaining_s)

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
            self.remaining_s,
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
    pause_rows: int = 0,
) -> tuple[Candidate | None, Plan]:
    """The most urgent job that wants the device (a held one waiting for its shape or
    paused, or the queue's ``head``) and the running jobs that make way for it by
    ``rules``: paused while the paused ones take at most ``pause_rows`` rows, else
    evicted."""
    waiting = most_urgent(flights, head, resolve, rules)
    if waiting is None:
        return None, Plan()
    running = [f.as_running() for f in flights.values() if f.running and not f.stopping]
    room = pause_rows - sum(f.rows for f in flights.values() if f.paused or f.pausing)
    plan = victims(waiting, running, capacity_rows, rules, room)
    if head is not None and waiting.job_id == head.job.id and plan:
        # Claimed jobs that wait for their shape would take the freed device before the
        # queued job is claimed: less urgent ones go back too.
        plan.evict.extend(
            job_id
            for job_id, f in flights.items()
            if f.waiting and not f.paused and yields(f.as_running(), waiting, rules)
        )
    return waiting, plan


def most_urgent(
    flights: Mapping[str, Flight],
    head: Head | None,
    resolve: Callable[[JobSpec], JobSpec],
    rules: Rules,
) -> Candidate | None:
    """The most urgent job that wants the device: a held one waiting for its shape or
    paused, or the queue's head, which goes first only if the held ones would make
    way for it (a tie goes to the one already held)."""
    held = [flight for flight in flights.values() if flight.waiting]
    first = min(held, key=lambda f: (f.rank, f.remaining_s), default=None)
    if head is not None and head.job.id not in flights:
        job = head.job
        queued = Candidate(
            job.id,
            rank(job.lane, head.aged),
            rows_of(job),
            shape_of(resolve(job.spec)),
            job.cost_s,
        )
        # The head goes first by the rule that would pause a running job for it (the
        # held one makes way at no cost: it is paused, or not started).
        if first is None or yields(first.as_running(), queued, rules, pause=True):
            return queued
    return None if first is None else first.as_candidate()
