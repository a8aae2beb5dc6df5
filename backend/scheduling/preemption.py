"""Which running jobs to evict at the next step boundary so a more urgent one can start.

Pure: the worker (and the scheduler benchmark) describe the device and the waiting
job, and get back job ids to evict. Evicted jobs keep their state and go back to the
queue ahead of their lane (see :mod:`backend.scheduling.fairness`), which is their
resume boost.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.models import Lane
from backend.scheduling.fairness import LANE_ORDER

if TYPE_CHECKING:
    from config.settings import SchedulerSettings


def rank(lane: Lane, aged: bool) -> int:
    """Lower is more urgent: an aged job of any lane, then lanes in order."""
    return 0 if aged else 1 + LANE_ORDER.index(lane)


@dataclass(frozen=True, slots=True)
class Rules:
    """Anti-thrashing: a job runs ``min_steps`` between two preemptions, and is
    preempted at most ``max_per_job`` times.

    No defaults: the scheduler settings are the one source of these values, through
    :meth:`from_settings`.
    """

    enabled: bool
    min_steps: int
    max_per_job: int

    @classmethod
    def from_settings(cls, scheduler: SchedulerSettings) -> Rules:
        """The preemption switch and anti-thrashing limits the settings give."""
        return cls(scheduler.preemption, scheduler.preempt_min_steps, scheduler.preempt_max_per_job)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A job that wants the device (queued, or claimed and waiting for its shape)."""

    job_id: str
    rank: int
    rows: int
    shape: Hashable


@dataclass(frozen=True, slots=True)
class Running:
    """A job in the device's running batch."""

    job_id: str
    rank: int
    rows: int
    shape: Hashable
    steps_since_resume: int
    preemptions: int
    started_seq: int  # larger: started (or resumed) later
    remaining_steps: int = 0  # steps left to finish (for start-time estimates)

    def movable(self, rules: Rules) -> bool:
        """Whether ``rules`` let this job be evicted now (whatever its rank)."""
        return self.steps_since_resume >= rules.min_steps and self.preemptions < rules.max_per_job

    def steps_until_gone(self, waiting: Candidate, rules: Rules) -> int:
        """Steps until this job no longer holds the device against ``waiting``: until
        it may be preempted, or until it finishes if it never may."""
        if rules.enabled and self.rank > waiting.rank and self.preemptions < rules.max_per_job:
            return min(max(1, rules.min_steps - self.steps_since_resume), self.remaining_steps)
        return self.remaining_steps


def victims(
    waiting: Candidate, running: Sequence[Running], capacity_rows: int, rules: Rules
) -> list[str]:
    """Jobs to evict so ``waiting`` can start at the next boundary; empty if none
    should (it fits already, nothing less urgent may move, or evicting would not help).

    The running batch has one shape. A waiting job of another shape needs the whole
    device, so every running job must be less urgent and movable; otherwise the least
    urgent movable jobs go, latest started first, until enough rows are free.
    """
    if not rules.enabled or not running:
        return []
    if running[0].shape != waiting.shape:
        if all(job.rank > waiting.rank and job.movable(rules) for job in running):
            return [job.job_id for job in running]
        return []
    free = capacity_rows - sum(job.rows for job in running)
    if free >= waiting.rows:
        return []
    movable = [job for job in running if job.rank > waiting.rank and job.movable(rules)]
    movable.sort(key=lambda job: (-job.rank, -job.started_seq))
    chosen: list[str] = []
    for job in movable:
        if free >= waiting.rows:
            break
        chosen.append(job.job_id)
        free += job.rows
    return chosen if free >= waiting.rows else []


def steps_until_start(
    waiting: Candidate, running: Sequence[Running], capacity_rows: int, rules: Rules
) -> int:
    """Steps the running batch takes before ``waiting`` can start, by the same rules as
    :func:`victims`, if nothing else arrives: 0 for an idle device, 1 when it joins the
    batch or may preempt it at the next boundary, more while jobs in its way are
    protected by ``min_steps`` or cannot be preempted at all."""
    if not running:
        return 0
    gone = sorted((job.steps_until_gone(waiting, rules), job.rows) for job in running)
    if running[0].shape != waiting.shape:
        return max(1, gone[-1][0])
    free = capacity_rows - sum(job.rows for job in running)
    if free >= waiting.rows:
        return 1
    for steps, rows in gone:
        free += rows
        if free >= waiting.rows:
            return max(1, steps)
    return max(1, gone[-1][0])
