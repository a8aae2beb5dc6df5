"""Which running jobs to evict at the next step boundary so a more urgent one can start.

Pure: the worker (and the scheduler benchmark) describe the device and the waiting
job, and get back job ids to evict. Evicted jobs keep their state and go back to the
queue ahead of their lane (see ``backend.fairness``), which is their resume boost.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from backend.fairness import LANE_ORDER
from backend.models import Lane


def rank(lane: Lane, aged: bool) -> int:
    """Lower is more urgent: an aged job of any lane, then lanes in order."""
    return 0 if aged else 1 + LANE_ORDER.index(lane)


@dataclass(frozen=True, slots=True)
class Rules:
    """Anti-thrashing: a job runs ``min_steps`` between two preemptions, and is
    preempted at most ``max_per_job`` times."""

    enabled: bool = True
    min_steps: int = 4
    max_per_job: int = 3


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

    def movable(self, rules: Rules) -> bool:
        return self.steps_since_resume >= rules.min_steps and self.preemptions < rules.max_per_job


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
