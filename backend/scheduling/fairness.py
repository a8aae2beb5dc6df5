"""Which queued job runs next: lanes, weighted fair queuing across users, aging.

The rules, shared by every queue backend (the Redis backend's Lua scripts apply the
same arithmetic) and by the scheduler benchmark, which drives this very class:

* Each lane keeps a virtual time ``V`` and, per user, the finish tag ``F`` of their
  last job. A new job of estimated cost ``c`` device-seconds from a user of weight
  ``w`` (their tier's weight) gets the start tag ``S = max(V, F_user)`` and moves
  ``F_user`` to the job's finish tag ``F = S + c / w``. Serving the smallest finish
  tag first is weighted fair queuing by virtual finish time: users who stay
  backlogged get device time in proportion to their weights, one user's flood only
  queues behind their own earlier jobs, and among users equally served so far the
  cheaper job goes first (the order is size-aware: a 4-step job does not wait for a
  50-step one that arrived a moment earlier).
* Within one user's queued jobs of a lane that never ran, the cheapest goes first: a
  new job takes its place in the user's sequence by cost, and the tags of the user's
  queued jobs are laid out again from the first one's start tag, in that order. The
  user's total (and so everyone else's share) is unchanged; only their own order is,
  so a quick job does not wait for its owner's long one queued a moment earlier.
* Serving a job of cost ``c`` moves ``V`` on by ``c / W``, ``W`` the summed weight of
  the users with jobs queued in the lane (as fluid fair queuing's virtual time runs:
  users who queued a lot catch up while light users come and go), and at least to
  its start tag. A job given back (preempted, or its
  lease expired) keeps its tags and its enqueue time, and wins ties on the tag, so it
  goes back to the front of its lane: the resume boost.
* Size within fairness: a lane serves, of its eligible jobs whose finish tag is at
  most ``size_slack`` virtual seconds after the first one's, the cheapest (ties in
  tag order). A quick job does not queue behind a long one whose owner is only a
  little behind in service, while no user falls more than the slack behind their
  fair share for it (0: strict finish-tag order). A job given back at the head of its
  lane keeps its place (the resume boost, below).
* Aging: a job that has waited ``aging_fraction`` of its lane's ``max_wait_s`` is
  served before every job that has not, earliest deadline first, whatever its lane
  or tier, except the job that comes first otherwise when it costs at most
  1/``yield_ratio`` of the aged one (it delays the aged job by little, and a quick job
  does not queue behind a long one for half a wait bound). Otherwise lanes go in
  order (realtime, batch, background).
* A user with ``max_running`` jobs leased (a job paused in place on a device does not
  count) is skipped until one comes back; so is a
  tier or lane the caller excludes (degradation).

Pure and synchronous, with the time passed in: unit tests drive it without a loop.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from backend.models import Lane
from config.settings import SchedulerSettings

LANE_ORDER: tuple[Lane, ...] = (Lane.REALTIME, Lane.BATCH, Lane.BACKGROUND)
MIN_COST_S = 1e-3


@dataclass(frozen=True, slots=True)
class ClaimFilter:
    """Work a device must not start now (the degradation ladder's pauses)."""

    exclude_tiers: frozenset[str] = frozenset()
    lanes: frozenset[Lane] = frozenset(LANE_ORDER)

    def allows(self, lane: Lane, tier: str) -> bool:
        """Whether work of ``lane`` from a user of ``tier`` may start."""
        return lane in self.lanes and tier not in self.exclude_tiers


EVERYTHING = ClaimFilter()


@dataclass(frozen=True, slots=True)
class AgingPolicy:
    """Per-lane wait bounds (ms) and the fraction of it after which a job is aged."""

    max_wait_ms: Mapping[Lane, int]
    aging_fraction: float = 0.5
    # An aged job lets a job at most 1/yield_ratio its cost go first (inf: none).
    yield_ratio: float = math.inf
    # Within a lane, the cheapest job with a finish tag at most this far after the
    # first one's goes first (virtual seconds; 0: strict finish-tag order).
    size_slack: float = 0.0

    def aged_after_ms(self, lane: Lane) -> int:
        """How long a job of ``lane`` waits before it counts as aged (ms)."""
        return int(self.max_wait_ms[lane] * self.aging_fraction)

    @classmethod
    def from_seconds(
        cls,
        max_wait_s: Mapping[Lane, float],
        fraction: float,
        yield_ratio: float = math.inf,
        size_slack: float = 0.0,
    ) -> AgingPolicy:
        """From wait bounds in seconds per lane, the aging fraction, the yield ratio
        and the size slack."""
        waits = {lane: int(s * 1000) for lane, s in max_wait_s.items()}
        return cls(waits, fraction, yield_ratio, size_slack)

    @classmethod
    def from_settings(cls, scheduler: SchedulerSettings) -> AgingPolicy:
        """Each lane's wait bound and the aging fraction, as the settings give them."""
        return cls.from_seconds(
            {
                Lane.REALTIME: scheduler.realtime_max_wait_s,
                Lane.BATCH: scheduler.batch_max_wait_s,
                Lane.BACKGROUND: scheduler.background_max_wait_s,
            },
            scheduler.aging_fraction,
            scheduler.preempt_size_ratio,
            scheduler.fair_size_slack_s,
        )

    def max_wait_s(self, lane: Lane) -> float:
        """The wait bound of ``lane`` in seconds."""
        return self.max_wait_ms[lane] / 1000


@dataclass(slots=True)
class Ticket:
    """A queued job as fair queuing sees it."""

    job_id: str
    lane: Lane
    user: str
    tier: str
    cost_s: float
    weight: float
    max_running: int  # 0: no cap
    start_tag: float = 0.0
    finish_tag: float = 0.0
    enqueued_at_ms: int = 0
    seq: int = 0

    def deadline_ms(self, aging: AgingPolicy) -> int:
        """When the job's wait reaches its lane's bound (ms, the queue's clock)."""
        return self.enqueued_at_ms + aging.max_wait_ms[self.lane]

    def is_aged(self, aging: AgingPolicy, now_ms: int) -> bool:
        """Whether the job has waited long enough to go ahead of every unaged job."""
        return now_ms - self.enqueued_at_ms >= aging.aged_after_ms(self.lane)


@dataclass(slots=True)
class _Lane:
    vtime: float = 0.0
    finish: dict[str, float] = field(default_factory=dict)
    by_tag: list[tuple[float, int, str]] = field(default_factory=list)
    by_age: list[tuple[float, int, str]] = field(default_factory=list)
    count: int = 0
    # Per user with queued jobs: how many, and their weight; and the weights' sum.
    backlog: dict[str, tuple[int, float]] = field(default_factory=dict)
    weight_sum: float = 0.0
    # Per user: their queued jobs that never ran, in their tag order (cheapest first).
    fresh: dict[str, list[Ticket]] = field(default_factory=dict)

    def queued(self, ticket: Ticket) -> None:
        """Count one more queued ticket of its user (a newly waiting user's weight joins
        the sum)."""
        count, _ = self.backlog.get(ticket.user, (0, 0.0))
        if count == 0:
            self.weight_sum += ticket.weight
        self.backlog[ticket.user] = (count + 1, ticket.weight)

    def unqueued(self, ticket: Ticket) -> None:
        """Count one queued ticket of its user fewer."""
        count, weight = self.backlog.pop(ticket.user, (1, ticket.weight))
        if count > 1:
            self.backlog[ticket.user] = (count - 1, weight)
        else:
            self.weight_sum = max(0.0, self.weight_sum - weight)
        if not self.backlog or self.count == 0:
            self.backlog.clear()
            self.weight_sum = 0.0


class FairQueue:
    """Queued tickets of every lane, and how many each user has leased."""

    def __init__(self, aging: AgingPolicy) -> None:
        self.aging = aging
        self._lanes = {lane: _Lane() for lane in LANE_ORDER}
        self._tickets: dict[str, Ticket] = {}
        self._running: dict[str, int] = {}
        self._seq = itertools.count(1)

    # -- queueing ------------------------------------------------------------------------

    def push(self, ticket: Ticket, now_ms: int) -> Ticket:
        """Queue a new job: stamp its tags (laying out its user's queued jobs again,
        cheapest first) and its enqueue time."""
        lane = self._lanes[ticket.lane]
        fresh = lane.fresh.setdefault(ticket.user, [])
        start = fresh[0].start_tag if fresh else max(lane.vtime, lane.finish.get(ticket.user, 0.0))
        ticket.enqueued_at_ms = now_ms
        ticket.seq = next(self._seq)
        fresh.append(ticket)
        fresh.sort(key=lambda one: (one.cost_s, one.seq))
        for one in fresh:
            finish = start + max(one.cost_s, MIN_COST_S) / max(one.weight, 1e-9)
            if (one.start_tag, one.finish_tag) != (start, finish):
                one.start_tag, one.finish_tag = start, finish
                if one is not ticket:  # queued already: its old heap entry goes stale
                    heapq.heappush(lane.by_tag, (finish, one.seq, one.job_id))
            start = finish
        lane.finish[ticket.user] = start
        self._insert(ticket)
        return ticket

    def restore(self, ticket: Ticket, waited_since_ms: int | None = None) -> None:
        """Put back a job that was taken (preempted or lease lost), tags unchanged.

        A preempted job passes ``waited_since_ms`` (now): its wait, and so its aging,
        starts again. Otherwise it would come back already aged, outrank the job it
        made room for and take the device straight back.
        """
        self._release(ticket.user)
        if waited_since_ms is not None:
            ticket.enqueued_at_ms = waited_since_ms
        # A fresh, negative sequence number: its old heap entries go stale, and it
        # sorts before jobs with the same start tag that never ran.
        ticket.seq = -next(self._seq)
        self._insert(ticket)

    def release(self, ticket: Ticket) -> None:
        """A taken job is finished or dropped: its user has one running job fewer."""
        self._release(ticket.user)

    def suspend(self, ticket: Ticket) -> None:
        """A taken job is paused in place: it stops counting against its user's running
        cap until :meth:`unsuspend` (pausing takes no device time)."""
        self._release(ticket.user)

    def unsuspend(self, ticket: Ticket) -> None:
        """A paused job runs again and counts again (its user may go over the cap by
        it: the job was theirs before the cap let another start)."""
        self._running[ticket.user] = self._running.get(ticket.user, 0) + 1

    def remove(self, job_id: str) -> Ticket | None:
        """Drop a queued job (cancelled); its heap entries go stale and are skipped."""
        ticket = self._tickets.pop(job_id, None)
        if ticket is not None:
            lane = self._lanes[ticket.lane]
            lane.count -= 1
            lane.unqueued(ticket)
            fresh = lane.fresh.get(ticket.user)
            if fresh is not None and ticket in fresh:
                fresh.remove(ticket)
                if not fresh:
                    del lane.fresh[ticket.user]
        return ticket

    def _insert(self, ticket: Ticket) -> None:
        lane = self._lanes[ticket.lane]
        self._tickets[ticket.job_id] = ticket
        heapq.heappush(lane.by_tag, (ticket.finish_tag, ticket.seq, ticket.job_id))
        heapq.heappush(lane.by_age, (ticket.enqueued_at_ms, ticket.seq, ticket.job_id))
        lane.count += 1
        lane.queued(ticket)

    def _release(self, user: str) -> None:
        left = self._running.get(user, 0) - 1
        if left > 0:
            self._running[user] = left
        else:
            self._running.pop(user, None)

    # -- serving -------------------------------------------------------------------------

    def pop(self, now_ms: int, allow: ClaimFilter = EVERYTHING) -> Ticket | None:
        """Take the next job to run under the rules above, or None."""
        ticket = self.peek(now_ms, allow)
        if ticket is None:
            return None
        lane = self._lanes[ticket.lane]
        # The virtual time moves as fluid fair queuing's would: by the work served over
        # the weight of the users waiting (the served one's included), and never
        # behind the served job's start tag.
        served = max(ticket.cost_s, MIN_COST_S) / max(lane.weight_sum, 1e-9)
        lane.vtime = max(lane.vtime + served, ticket.start_tag)
        self.remove(ticket.job_id)
        self._running[ticket.user] = self._running.get(ticket.user, 0) + 1
        return ticket

    def peek(self, now_ms: int, allow: ClaimFilter = EVERYTHING) -> Ticket | None:
        """The job :meth:`pop` would take, left in place."""
        aged = [
            ticket
            for lane in LANE_ORDER
            if lane in allow.lanes
            and (ticket := self._first(lane, "age", now_ms, allow, aged_only=True)) is not None
        ]
        first = self._first_in_order(now_ms, allow)
        if not aged:
            return first
        oldest = min(aged, key=lambda t: (t.deadline_ms(self.aging), t.seq))
        if first is not None and first.cost_s * self.aging.yield_ratio <= oldest.cost_s:
            return first  # much smaller: it delays the aged job by little
        return oldest

    def _first_in_order(self, now_ms: int, allow: ClaimFilter) -> Ticket | None:
        """The first eligible job by lane, then fair order, aging aside."""
        for lane in LANE_ORDER:
            if lane in allow.lanes:
                ticket = self._first(lane, "tag", now_ms, allow, aged_only=False)
                if ticket is not None:
                    return ticket
        return None

    def _first(
        self, lane: Lane, order: str, now_ms: int, allow: ClaimFilter, *, aged_only: bool
    ) -> Ticket | None:
        if aged_only:
            for ticket in self._ordered(lane, order):
                if not ticket.is_aged(self.aging, now_ms):
                    return None
                if self.eligible(ticket, allow):
                    return ticket
            return None
        # In tag order: the cheapest eligible job within the slack of the first one.
        best: Ticket | None = None
        limit = math.inf
        for ticket in self._ordered(lane, order):
            if ticket.finish_tag > limit:
                break
            if not self.eligible(ticket, allow):
                continue
            if best is None:
                if ticket.seq < 0 or self.aging.size_slack <= 0:
                    return ticket  # given back, it keeps its place (the resume boost)
                best, limit = ticket, ticket.finish_tag + self.aging.size_slack
            elif ticket.cost_s < best.cost_s:
                best = ticket
        return best

    def eligible(self, ticket: Ticket, allow: ClaimFilter = EVERYTHING) -> bool:
        """Whether ``ticket`` may start now: ``allow`` permits it and its user is under
        their running cap."""
        if not allow.allows(ticket.lane, ticket.tier):
            return False
        return ticket.max_running <= 0 or self._running.get(ticket.user, 0) < ticket.max_running

    def _ordered(self, lane: Lane, order: str) -> Iterator[Ticket]:
        """Live tickets of a lane in tag (or age) order; prunes stale heap heads."""
        state = self._lanes[lane]
        by_tag = order == "tag"
        heap = state.by_tag if by_tag else state.by_age
        while heap and not self._live(heap[0], by_tag):
            heapq.heappop(heap)
        for entry in _walk(heap):
            if self._live(entry, by_tag):
                yield self._tickets[entry[2]]

    def _live(self, entry: tuple[float, int, str], by_tag: bool) -> bool:
        """Whether a heap entry is its ticket's current one (a ticket taken, given
        back or tagged again leaves stale entries behind)."""
        key, seq, job_id = entry
        ticket = self._tickets.get(job_id)
        if ticket is None or ticket.seq != seq:
            return False
        return not by_tag or ticket.finish_tag == key

    # -- looking ---------------------------------------------------------------------------

    def depth(self, lane: Lane | None = None) -> int:
        """Queued jobs in ``lane``, or in every lane."""
        lanes = LANE_ORDER if lane is None else (lane,)
        return sum(self._lanes[one].count for one in lanes)

    def position(self, job_id: str) -> int | None:
        """0-based place in its lane's fair order (aging aside); None if not queued."""
        ticket = self._tickets.get(job_id)
        if ticket is None:
            return None
        key = (ticket.finish_tag, ticket.seq)
        return sum(1 for t in self.queued(ticket.lane) if (t.finish_tag, t.seq) < key)

    def queued(self, lane: Lane | None = None) -> Iterable[Ticket]:
        """Queued tickets of ``lane`` (or of every lane), in no particular order."""
        lanes = LANE_ORDER if lane is None else (lane,)
        return [t for t in self._tickets.values() if t.lane in lanes]

    def running(self, user: str) -> int:
        """Jobs of ``user`` taken and not yet finished or given back."""
        return self._running.get(user, 0)


def _walk(
    heap: list[tuple[float, int, str]] | list[tuple[int, int, str]],
) -> Iterator[tuple[float, int, str]]:
    """A binary heap's items in sorted order, lazily: O(k log k) for the first k."""
    if not heap:
        return
    frontier: list[tuple[tuple[float, int, str], int]] = [(heap[0], 0)]
    while frontier:
        item, index = heapq.heappop(frontier)
        yield item
        for child in (2 * index + 1, 2 * index + 2):
            if child < len(heap):
                heapq.heappush(frontier, (heap[child], child))
