"""Which running jobs make way at the next step boundary so a more urgent one can start,
and whether each is paused in place or evicted.

Pure: the worker (and the scheduler benchmark) describe the device and the waiting
job, and get back a :class:`Plan`. A job makes way for one of a more urgent rank (an
aged job, then lanes in order), or, within one rank, for a job at least
``size_ratio`` times smaller than the work it has left: shortest remaining work first
among equals, with a margin so that jobs of similar size do not swap back and forth.

A job that makes way is *paused* when the device has room to keep it (its latents
stay in device memory; nothing is saved, and it resumes at a later boundary on the
same device), else *evicted*: its checkpoint is saved and it goes back to the queue
ahead of its lane (see :mod:`backend.scheduling.fairness`), which is its resume
boost. Evictions are the costly kind and the only kind ``max_per_job`` limits.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
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
    evicted at most ``max_per_job`` times; within one rank, a job makes way only for
    one whose cost is at most 1/``size_ratio`` of its remaining work (``inf``: never).

    No defaults but ``size_ratio``'s: the scheduler settings are the one source of
    these values, through :meth:`from_settings`.
    """

    enabled: bool
    min_steps: int
    max_per_job: int
    size_ratio: float = math.inf

    @classmethod
    def from_settings(cls, scheduler: SchedulerSettings) -> Rules:
        """The preemption switch and anti-thrashing limits the settings give."""
        return cls(
            scheduler.preemption,
            scheduler.preempt_min_steps,
            scheduler.preempt_max_per_job,
            scheduler.preempt_size_ratio,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A job that wants the device (queued, or claimed and waiting for its shape)."""

    job_id: str
    rank: int
    rows: int
    shape: Hashable
    cost_s: float = 0.0  # device-seconds of work left, running alone (0: unknown)


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
    remaining_s: float = 0.0  # device-seconds left, running alone (0: unknown)

    def movable(self, rules: Rules, *, pause: bool = False) -> bool:
        """Whether ``rules`` let this job make way now (whatever its rank): paused in
        place when ``pause``, else evicted."""
        if self.steps_since_resume < rules.min_steps:
            return False
        return pause or self.preemptions < rules.max_per_job

    def steps_until_gone(self, waiting: Candidate, rules: Rules, *, pause: bool = False) -> int:
        """Steps until this job no longer holds the device against ``waiting``: until
        it may make way, or until it finishes if it never may."""
        if (
            rules.enabled
            and yields(self, waiting, rules)
            and (pause or self.preemptions < rules.max_per_job)
        ):
            return min(max(1, rules.min_steps - self.steps_since_resume), self.remaining_steps)
        return self.remaining_steps


def yields(job: Running, waiting: Candidate, rules: Rules) -> bool:
    """Whether ``job`` should make way for ``waiting`` (movability aside): ``waiting``
    has a more urgent rank, or the same rank and at most 1/``size_ratio`` of the work
    ``job`` has left."""
    if job.rank != waiting.rank:
        return job.rank > waiting.rank
    return waiting.cost_s > 0 and waiting.cost_s * rules.size_ratio <= job.remaining_s


@dataclass(frozen=True, slots=True)
class Plan:
    """The running jobs that make way: paused in place, or evicted (checkpointed)."""

    pause: list[str] = field(default_factory=list)
    evict: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.pause or self.evict)


def victims(
    waiting: Candidate,
    running: Sequence[Running],
    capacity_rows: int,
    rules: Rules,
    pause_rows: int = 0,
) -> Plan:
    """The jobs that make way so ``waiting`` can start at the next boundary; an empty
    plan if none should (it fits already, nothing may move, or moving would not help).
    Up to ``pause_rows`` rows are paused in place; the rest are evicted.

    The running batch has one shape. A waiting job of another shape needs the whole
    device, so every running job must yield and be movable; otherwise the least urgent
    movable jobs go, latest started first, until enough rows are free.
    """
    if not rules.enabled or not running:
        return Plan()
    if running[0].shape != waiting.shape:
        if all(yields(job, waiting, rules) for job in running):
            return _plan(running, rules, pause_rows)
        return Plan()
    free = capacity_rows - sum(job.rows for job in running)
    if free >= waiting.rows:
        return Plan()
    candidates = [job for job in running if yields(job, waiting, rules)]
    candidates.sort(key=lambda job: (-job.rank, -job.remaining_s, -job.started_seq))
    chosen: list[Running] = []
    for job in candidates:
        if free >= waiting.rows:
            break
        if job.movable(rules, pause=True):
            chosen.append(job)
            free += job.rows
    if free < waiting.rows:
        return Plan()
    return _plan(chosen, rules, pause_rows)


def _plan(jobs: Sequence[Running], rules: Rules, pause_rows: int) -> Plan:
    """Pause what fits in ``pause_rows`` (largest remaining work first), evict the rest;
    an empty plan when some job may move neither way."""
    plan = Plan()
    room = pause_rows
    for job in sorted(jobs, key=lambda job: -job.remaining_s):
        if job.rows <= room and job.movable(rules, pause=True):
            plan.pause.append(job.job_id)
            room -= job.rows
        elif job.movable(rules):
            plan.evict.append(job.job_id)
        else:
            return Plan()
    return plan


def steps_until_start(
    waiting: Candidate,
    running: Sequence[Running],
    capacity_rows: int,
    rules: Rules,
    pause_rows: int = 0,
) -> int:
    """Steps the running batch takes before ``waiting`` can start, by the same rules as
    :func:`victims`, if nothing else arrives: 0 for an idle device, 1 when it joins the
    batch or may preempt it at the next boundary, more while jobs in its way are
    protected by ``min_steps`` or cannot be preempted at all."""
    if not running:
        return 0
    pause = pause_rows >= sum(job.rows for job in running)
    gone = sorted((job.steps_until_gone(waiting, rules, pause=pause), job.rows) for job in running)
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
