"""Which running jobs make way at the next step boundary so a more urgent one can start,
and whether each is paused in place or evicted.

Pure: the worker (and the scheduler benchmark) describe the device and the waiting
job, and get back a :class:`Plan`. A job makes way for one of a more urgent lane, or,
within one rank, for a smaller job: shortest remaining work first among equals. An
aged job outranks every waiting one, but a job already taken (running, paused or
held) counts as aged against it and makes way only for a smaller one. Pausing costs
nothing, so a job is paused for any job with less work than it has left
(``pause_ratio`` 1); evicting costs a checkpoint round trip, so a job is evicted only
for one at least ``size_ratio`` times smaller, a margin that keeps jobs of similar
size from trading places through the store.

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


AGED_RANK = 0


def rank(lane: Lane, aged: bool) -> int:
    """Lower is more urgent: an aged job of any lane, then lanes in order."""
    return AGED_RANK if aged else 1 + LANE_ORDER.index(lane)


def joins_when_it_fits(job_rank: int) -> bool:
    """Whether work of ``job_rank`` joins a running batch of its shape whenever there is
    room (realtime and aged work); other work joins only while batching still pays
    (``scheduler.batch_min_gain``)."""
    return job_rank <= rank(Lane.REALTIME, aged=False)


@dataclass(frozen=True, slots=True)
class Rules:
    """Anti-thrashing: a job runs ``min_steps`` between two preemptions, and is
    evicted at most ``max_per_job`` times; within one rank, a job is evicted only for
    one whose cost is at most 1/``size_ratio`` of its remaining work, and paused only
    for one whose cost times ``pause_ratio`` is less than it (``inf``: never).

    No defaults but the ratios': the scheduler settings are the one source of these
    values, through :meth:`from_settings`.
    """

    enabled: bool
    min_steps: int
    max_per_job: int
    size_ratio: float = math.inf
    pause_ratio: float = math.inf

    @classmethod
    def from_settings(cls, scheduler: SchedulerSettings) -> Rules:
        """The preemption switch and anti-thrashing limits the settings give."""
        return cls(
            scheduler.preemption,
            scheduler.preempt_min_steps,
            scheduler.preempt_max_per_job,
            scheduler.preempt_size_ratio,
            scheduler.preempt_pause_ratio,
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
        if rules.enabled and (
            (pause and yields(self, waiting, rules, pause=True))
            or (yields(self, waiting, rules) and self.preemptions < rules.max_per_job)
        ):
            return min(max(1, rules.min_steps - self.steps_since_resume), self.remaining_steps)
        return self.remaining_steps


def yields(job: Running, waiting: Candidate, rules: Rules, *, pause: bool = False) -> bool:
    """Whether ``job`` should make way for ``waiting`` (movability aside): ``waiting``
    has a more urgent rank, or the same rank and at most 1/``size_ratio`` of the work
    ``job`` has left; with ``pause`` (making way costs nothing: paused in place, or
    not started), less than 1/``pause_ratio`` of it. Against an aged job, a job already
    taken from the queue counts as aged too (it has waited as well): aged work then
    takes the device from it only by being smaller, so partly done jobs do not pile
    up paused, nor trade places with it at every boundary."""
    if job.rank != waiting.rank and waiting.rank != AGED_RANK:
        return job.rank > waiting.rank
    if waiting.cost_s <= 0:
        return False
    if pause and waiting.cost_s * rules.pause_ratio < job.remaining_s:
        return True
    return waiting.cost_s * rules.size_ratio <= job.remaining_s


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
    device, so every running job must make way; otherwise the least urgent jobs that
    may make way go, most work left first, until enough rows are free.
    """
    if not rules.enabled or not running:
        return Plan()
    if running[0].shape != waiting.shape:
        ordered = sorted(running, key=lambda job: -job.remaining_s)
        return _plan(waiting, ordered, rules, pause_rows, need_all=True)
    free = capacity_rows - sum(job.rows for job in running)
    if free >= waiting.rows:
        return Plan()
    candidates = sorted(running, key=lambda job: (-job.rank, -job.remaining_s, -job.started_seq))
    return _plan(waiting, candidates, rules, pause_rows, need_rows=waiting.rows - free)


def _plan(
    waiting: Candidate,
    jobs: Sequence[Running],
    rules: Rules,
    pause_rows: int,
    *,
    need_all: bool = False,
    need_rows: int = 0,
) -> Plan:
    """Move ``jobs`` in order: paused while ``pause_rows`` has room, else evicted, each
    as the rules allow for ``waiting``; all of them when ``need_all`` (an empty plan if
    one may move neither way), else until ``need_rows`` rows are free (an empty plan
    if they cannot be)."""
    plan = Plan()
    room, freed = pause_rows, 0
    for job in jobs:
        if not need_all and freed >= need_rows:
            break
        if (
            job.rows <= room
            and job.movable(rules, pause=True)
            and yields(job, waiting, rules, pause=True)
        ):
            plan.pause.append(job.job_id)
            room -= job.rows
        elif job.movable(rules) and yields(job, waiting, rules):
            plan.evict.append(job.job_id)
        elif need_all:
            return Plan()
        else:
            continue
        freed += job.rows
    if not need_all and freed < need_rows:
        return Plan()
    return plan


def steps_until_start(
    waiting: Candidate,
    running: Sequence[Running],
    capacity_rows: int,
    rules: Rules,
    pause_rows: int = 0,
    *,
    joins: bool = True,
) -> int:
    """Steps the running batch takes before ``waiting`` can start, by the same rules as
    :func:`victims`, if nothing else arrives: 0 for an idle device, 1 when it joins the
    batch or may preempt it at the next boundary, more while jobs in its way are
    protected by ``min_steps`` or cannot be preempted at all. Without ``joins`` (the
    batch would not gain by growing) it waits for the whole batch, as for another
    shape."""
    if not running:
        return 0
    pause = pause_rows >= sum(job.rows for job in running)
    gone = sorted((job.steps_until_gone(waiting, rules, pause=pause), job.rows) for job in running)
    if running[0].shape != waiting.shape or not joins:
        return max(1, gone[-1][0])
    free = capacity_rows - sum(job.rows for job in running)
    if free >= waiting.rows:
        return 1
    for steps, rows in gone:
        free += rows
        if free >= waiting.rows:
            return max(1, steps)
    return max(1, gone[-1][0])
