"""The queue side of the scheduler benchmark's policies, and the job as the simulator
runs it.

``fifo``, ``fifo_batch`` and ``priority`` are FIFO queues (one job at a time, batched,
strict lanes); ``srpt`` is preemptive shortest remaining work first without fairness;
``fair_nopreempt`` and ``ours`` are the production fair queue, ``ours`` preempting.
Every policy honours the tiers' running caps (``max_running``) as production does: a
queued job whose user has that many jobs running waits, and the next eligible job
goes instead; a job paused in place does not count until it resumes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from backend.bench.trace import TraceJob
from backend.models import Lane
from backend.scheduling.fairness import LANE_ORDER, AgingPolicy, FairQueue, Ticket
from backend.scheduling.preemption import rank
from config.settings import SchedulerSettings

POLICIES: tuple[str, ...] = (
    "fifo",
    "fifo_batch",
    "priority",
    "srpt",
    "fair_nopreempt",
    "ours",
)


@dataclass(slots=True)
class SimJob:
    """One trace job as the simulator runs it: its lane and cost, and what happened."""

    trace: TraceJob
    lane: Lane
    cost_s: float
    rows: int
    weight: float
    max_running: int
    steps_done: int = 0
    first_start_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    pauses: int = 0
    steps_since_resume: int = 0
    started_seq: int = 0
    rank: int = 0
    resumed: bool = False
    est_wait_s: float | None = None
    ticket: Ticket | None = None
    # The admission limit that turned the job away (it never ran), if one did.
    refused: str | None = None

    @property
    def id(self) -> str:
        """The job's id: its index in the trace."""
        return str(self.trace.index)

    @property
    def shape(self) -> tuple[int, int]:
        """Width and height in pixels: jobs of one shape share a step."""
        return (self.trace.width, self.trace.height)


class Dispatcher(Protocol):
    """The queue side of a policy."""

    batching: bool
    preempting: bool

    def arrive(self, job: SimJob, now_s: float) -> None:
        """Queue a newly arrived job."""

    def head(self, now_s: float) -> SimJob | None:
        """The job :meth:`take` would return, with its rank set; None when none waits."""

    def take(self, now_s: float) -> SimJob:
        """Dequeue the head job to run it."""

    def give_back(self, job: SimJob, now_s: float) -> None:
        """Requeue a preempted job."""

    def paused(self, job: SimJob) -> None:
        """A taken job was paused in place: it no longer counts against its user's cap."""

    def resumed(self, job: SimJob) -> None:
        """A paused job runs again (its user may go over their cap by it)."""

    def done(self, job: SimJob) -> None:
        """A taken job finished."""

    def waiting(self) -> int:
        """How many jobs are queued."""

    def urgency(self, job: SimJob) -> int:
        """A running job's rank against a waiting one's (lower is more urgent)."""


class Caps:
    """Jobs each user has on the device (taken and not finished or given back), against
    their tier's ``max_running``."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def allows(self, job: SimJob) -> bool:
        """Whether ``job`` may start: its user is under their running cap."""
        return job.max_running <= 0 or self._held.get(job.trace.user, 0) < job.max_running

    def took(self, job: SimJob) -> None:
        """``job`` went to the device."""
        self._held[job.trace.user] = self._held.get(job.trace.user, 0) + 1

    def left(self, job: SimJob) -> None:
        """``job`` left the device (finished or given back)."""
        self._held[job.trace.user] -= 1


class _CappedDispatcher:
    """The running caps of a baseline's queue: what a taken job does to its user's
    count when it is paused, resumed or finished."""

    _caps: Caps

    def paused(self, job: SimJob) -> None:
        """A taken job was paused in place: it no longer counts against its user's cap."""
        self._caps.left(job)

    def resumed(self, job: SimJob) -> None:
        """A paused job runs again (its user may go over their cap by it)."""
        self._caps.took(job)

    def done(self, job: SimJob) -> None:
        """The job's user has one job fewer on the device."""
        self._caps.left(job)


class FifoDispatcher(_CappedDispatcher):
    """One queue in arrival order; optionally strict lane priority (FIFO per lane)."""

    def __init__(self, *, batching: bool, by_lane: bool) -> None:
        self.batching = batching
        self.preempting = False
        self._by_lane = by_lane
        self._queues: dict[Lane, deque[SimJob]] = {lane: deque() for lane in LANE_ORDER}
        self._caps = Caps()

    def _queue_of(self, job: SimJob) -> deque[SimJob]:
        return self._queues[job.lane if self._by_lane else Lane.REALTIME]

    def arrive(self, job: SimJob, now_s: float) -> None:
        """Queue at the back."""
        self._queue_of(job).append(job)

    def head(self, now_s: float) -> SimJob | None:
        """The oldest job whose user is under their cap (of the first lane with one, by
        lane)."""
        for lane in LANE_ORDER:
            for job in self._queues[lane]:
                if self._caps.allows(job):
                    job.rank = rank(job.lane, False)
                    return job
        return None

    def take(self, now_s: float) -> SimJob:
        """Dequeue the head job."""
        job = self.head(now_s)
        assert job is not None
        self._queue_of(job).remove(job)
        self._caps.took(job)
        return job

    def give_back(self, job: SimJob, now_s: float) -> None:
        """Requeue at the front."""
        self._caps.left(job)
        self._queue_of(job).appendleft(job)

    def waiting(self) -> int:
        """Jobs in every queue."""
        return sum(len(queue) for queue in self._queues.values())

    def urgency(self, job: SimJob) -> int:
        """The job's lane rank."""
        return rank(job.lane, aged=False)


class FairDispatcher:
    """The production fair queue (lanes, weighted fair queuing, aging, caps)."""

    def __init__(self, aging: AgingPolicy, *, preempting: bool) -> None:
        self.batching = True
        self.preempting = preempting
        self.fair = FairQueue(aging)
        self._jobs: dict[str, SimJob] = {}

    def arrive(self, job: SimJob, now_s: float) -> None:
        """Push the job's ticket with its tier's weight and cap."""
        ticket = Ticket(
            job_id=job.id,
            lane=job.lane,
            user=job.trace.user,
            tier=job.trace.tier,
            cost_s=job.cost_s,
            weight=job.weight,
            max_running=job.max_running,
        )
        job.ticket = self.fair.push(ticket, ms(now_s))
        self._jobs[job.id] = job

    def head(self, now_s: float) -> SimJob | None:
        """The fair queue's next job, ranked first if it has aged."""
        ticket = self.fair.peek(ms(now_s))
        if ticket is None:
            return None
        job = self._jobs[ticket.job_id]
        job.rank = rank(job.lane, ticket.is_aged(self.fair.aging, ms(now_s)))
        return job

    def take(self, now_s: float) -> SimJob:
        """Pop the head job from the fair queue."""
        job = self.head(now_s)
        ticket = self.fair.pop(ms(now_s))
        assert job is not None
        assert ticket is not None
        assert ticket.job_id == job.id
        return job

    def paused(self, job: SimJob) -> None:
        """A taken job was paused in place: it no longer counts against its user's cap."""
        assert job.ticket is not None
        self.fair.suspend(job.ticket)

    def resumed(self, job: SimJob) -> None:
        """A paused job runs again (its user may go over their cap by it)."""
        assert job.ticket is not None
        self.fair.unsuspend(job.ticket)

    def give_back(self, job: SimJob, now_s: float) -> None:
        """Restore the ticket, tags kept, its wait restarting now."""
        assert job.ticket is not None
        self.fair.restore(job.ticket, waited_since_ms=ms(now_s))

    def done(self, job: SimJob) -> None:
        """Release the user's running slot."""
        assert job.ticket is not None
        self.fair.release(job.ticket)
        del self._jobs[job.id]

    def waiting(self) -> int:
        """Jobs in the fair queue."""
        return self.fair.depth()

    def urgency(self, job: SimJob) -> int:
        """Aging decides when a job starts; once running it holds its lane's rank, as
        in the worker."""
        return rank(job.lane, aged=False)


class SrptDispatcher(_CappedDispatcher):
    """Preemptive shortest remaining work first, without fairness: the job with the
    least device time left runs first, and evicts running jobs with more left (within
    the same anti-thrashing rules as ``ours``)."""

    def __init__(self) -> None:
        self.batching = True
        self.preempting = True
        self._heap: list[tuple[int, int, SimJob]] = []
        self._seq = itertools.count()
        self._caps = Caps()

    def arrive(self, job: SimJob, now_s: float) -> None:
        """Queue by remaining work."""
        heapq.heappush(self._heap, (self.urgency(job), next(self._seq), job))

    def head(self, now_s: float) -> SimJob | None:
        """The job with the least work left whose user is under their cap."""
        skipped = []
        found = None
        while self._heap:
            if self._caps.allows(self._heap[0][2]):
                found = self._heap[0][2]
                break
            skipped.append(heapq.heappop(self._heap))
        for entry in skipped:
            heapq.heappush(self._heap, entry)
        if found is not None:
            found.rank = self.urgency(found)
        return found

    def take(self, now_s: float) -> SimJob:
        """Dequeue the head job."""
        job = self.head(now_s)
        assert job is not None
        if self._heap[0][2] is job:
            heapq.heappop(self._heap)
        else:
            self._heap = [entry for entry in self._heap if entry[2] is not job]
            heapq.heapify(self._heap)
        self._caps.took(job)
        return job

    def give_back(self, job: SimJob, now_s: float) -> None:
        """Requeue by the work it has left."""
        self._caps.left(job)
        self.arrive(job, now_s)

    def waiting(self) -> int:
        """Jobs queued."""
        return len(self._heap)

    def urgency(self, job: SimJob) -> int:
        """Remaining device milliseconds running alone, at least 1 (ranks compare only
        within one policy)."""
        return max(1, ms(remaining_s(job)))


def remaining_s(job: SimJob) -> float:
    """Device seconds the job has left, running alone."""
    return job.cost_s * (job.trace.steps - job.steps_done) / job.trace.steps


def ms(seconds: float) -> int:
    """Whole milliseconds of ``seconds`` (the fair queue's clock)."""
    return int(seconds * 1000)


def make_dispatcher(name: str, settings: SchedulerSettings) -> Dispatcher:
    """The queue side of the policy called ``name`` (one of :data:`POLICIES`)."""
    if name == "fifo":
        return FifoDispatcher(batching=False, by_lane=False)
    if name == "fifo_batch":
        return FifoDispatcher(batching=True, by_lane=False)
    if name == "priority":
        return FifoDispatcher(batching=True, by_lane=True)
    if name == "srpt":
        return SrptDispatcher()
    if name in ("fair_nopreempt", "ours"):
        return FairDispatcher(AgingPolicy.from_settings(settings), preempting=name == "ours")
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
