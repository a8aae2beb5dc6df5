"""``imagine bench scheduler``: replay one trace through several scheduling policies on
a simulated device, and measure waits, slowdowns, utilization and fairness.

The policies ``fair_nopreempt`` and ``ours`` run the production policy code itself:
lanes from :mod:`backend.scheduling.lanes`, fair queuing and aging from
:class:`backend.scheduling.fairness.FairQueue`, eviction choices from
:mod:`backend.scheduling.preemption`, and start-time estimates from
:mod:`backend.scheduling.eta`, all with the scheduler settings' values. The baselines
are the textbook schedulers they are measured against. Every policy sees the same jobs
in the same lanes (our classifier assigns them), on the same simulated device.

The device runs one batch at a time, of one latent shape, one denoising step per
iteration; jobs join and leave at step boundaries (continuous batching) and a step
of ``rows`` rows takes ``StepModel.step_s(rows, width, height)`` seconds.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from backend.bench.trace import TraceJob
from backend.errors import BadInputError
from backend.models import Lane
from backend.scheduling.eta import EtaModel, queued_ahead_s
from backend.scheduling.fairness import LANE_ORDER, AgingPolicy, FairQueue, Ticket
from backend.scheduling.lanes import CostModel, StepTimes, classify, rows_for
from backend.scheduling.preemption import (
    Candidate,
    Rules,
    Running,
    rank,
    steps_until_start,
    victims,
)
from config.settings import SchedulerSettings

POLICIES: tuple[str, ...] = ("fifo", "fifo_batch", "priority", "fair_nopreempt", "ours")
GUIDANCE = 7.0
MODEL = "sim"
# Restoring an evicted job re-encodes its prompt and loads its latents: one small
# fixed cost on the step it rejoins (the engine measures about a millisecond for the
# state itself; the text encoder dominates on a GPU).
RESUME_OVERHEAD_S = 0.01
BUSY_BUCKET_S = 60.0


class TableStepModel:
    """Step times measured by ``imagine bench engine --json`` at one shape, by rows,
    interpolated in rows and scaled to other shapes by the configured pixel exponent
    (``scheduler.step_pixel_exponent``)."""

    def __init__(
        self,
        rows: Sequence[int],
        step_s: Sequence[float],
        width: int,
        height: int,
        pixel_exponent: float,
    ) -> None:
        self.pixel_exponent = pixel_exponent
        self._rows = list(rows)
        self._step_s = list(step_s)
        self._pixels = width * height

    def step_s(self, rows: int, width: int, height: int) -> float:
        """The measured step time of ``rows`` rows, interpolated, scaled to the shape."""
        scale: float = (width * height / self._pixels) ** self.pixel_exponent
        xs, ys = self._rows, self._step_s
        if rows <= xs[0]:
            base = ys[0] * rows / xs[0] if rows < xs[0] else ys[0]
        elif rows >= xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else ys[-1] / xs[-1]
            base = ys[-1] + slope * (rows - xs[-1])
        else:
            i = bisect.bisect_left(xs, rows)
            frac = (rows - xs[i - 1]) / (xs[i] - xs[i - 1])
            base = ys[i - 1] + frac * (ys[i] - ys[i - 1])
        return base * scale

    @classmethod
    def from_engine_json(cls, data: dict[str, Any], pixel_exponent: float) -> TableStepModel:
        """From the JSON object ``imagine bench engine --json`` prints (guided samples:
        two rows each), scaled to other shapes by ``pixel_exponent``."""
        try:
            batches = sorted((int(k), float(v["step_s"])) for k, v in data["batches"].items())
            width, height = int(data["width"]), int(data["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(
                f"--step-times: not an `imagine bench engine --json` result ({exc})"
            ) from exc
        rows = [2 * n for n, _ in batches]
        return cls(rows, [s for _, s in batches], width, height, pixel_exponent)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """The simulated device: its step times, rows per step and idle batch window."""

    step_model: StepTimes
    capacity_rows: int = 16
    batch_window_s: float = 0.05


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
    steps_since_resume: int = 0
    started_seq: int = 0
    rank: int = 0
    resumed: bool = False
    est_wait_s: float | None = None
    ticket: Ticket | None = None

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

    def done(self, job: SimJob) -> None:
        """A taken job finished."""

    def waiting(self) -> int:
        """How many jobs are queued."""


class FifoDispatcher:
    """One queue in arrival order; optionally strict lane priority (FIFO per lane)."""

    def __init__(self, *, batching: bool, by_lane: bool) -> None:
        self.batching = batching
        self.preempting = False
        self._by_lane = by_lane
        self._queues: dict[Lane, deque[SimJob]] = {lane: deque() for lane in LANE_ORDER}

    def _queue_of(self, job: SimJob) -> deque[SimJob]:
        return self._queues[job.lane if self._by_lane else Lane.REALTIME]

    def arrive(self, job: SimJob, now_s: float) -> None:
        """Queue at the back."""
        self._queue_of(job).append(job)

    def head(self, now_s: float) -> SimJob | None:
        """The oldest job (of the first lane with one, by lane)."""
        for lane in LANE_ORDER:
            if self._queues[lane]:
                job = self._queues[lane][0]
                job.rank = rank(job.lane, False)
                return job
        return None

    def take(self, now_s: float) -> SimJob:
        """Dequeue the head job."""
        job = self.head(now_s)
        assert job is not None
        return self._queue_of(job).popleft()

    def give_back(self, job: SimJob, now_s: float) -> None:
        """Requeue at the front."""
        self._queue_of(job).appendleft(job)

    def done(self, job: SimJob) -> None:
        """Nothing to track."""
        return None

    def waiting(self) -> int:
        """Jobs in every queue."""
        return sum(len(queue) for queue in self._queues.values())


class FairDispatcher:
    """The production fair queue (lanes, start-time fair queuing, aging, caps)."""

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
        job.ticket = self.fair.push(ticket, _ms(now_s))
        self._jobs[job.id] = job

    def head(self, now_s: float) -> SimJob | None:
        """The fair queue's next job, ranked first if it has aged."""
        ticket = self.fair.peek(_ms(now_s))
        if ticket is None:
            return None
        job = self._jobs[ticket.job_id]
        job.rank = rank(job.lane, ticket.is_aged(self.fair.aging, _ms(now_s)))
        return job

    def take(self, now_s: float) -> SimJob:
        """Pop the head job from the fair queue."""
        job = self.head(now_s)
        ticket = self.fair.pop(_ms(now_s))
        assert job is not None
        assert ticket is not None
        assert ticket.job_id == job.id
        return job

    def give_back(self, job: SimJob, now_s: float) -> None:
        """Restore the ticket, tags kept, its wait restarting now."""
        assert job.ticket is not None
        self.fair.restore(job.ticket, waited_since_ms=_ms(now_s))

    def done(self, job: SimJob) -> None:
        """Release the user's running slot."""
        assert job.ticket is not None
        self.fair.release(job.ticket)
        del self._jobs[job.id]

    def waiting(self) -> int:
        """Jobs in the fair queue."""
        return self.fair.depth()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(slots=True)
class RunStats:
    """What one policy's run produced, for the metrics."""

    name: str
    jobs: list[SimJob]
    busy_queued_s: float = 0.0
    idle_queued_s: float = 0.0
    steps: int = 0
    jobs_in_steps: int = 0
    preemptions: int = 0
    busy_buckets: dict[int, float] = field(default_factory=dict)
    # Per (lane, user): (time, device-seconds) of each step their jobs were served in.
    service: dict[tuple[Lane, str], list[tuple[float, float]]] = field(default_factory=dict)
    overhead_s: list[float] = field(default_factory=list)


class Simulator:
    """One policy over one trace on one device."""

    def __init__(
        self,
        name: str,
        dispatcher: Dispatcher,
        jobs: list[SimJob],
        device: DeviceSpec,
        rules: Rules,
        *,
        estimate: Callable[[SimJob, float], float] | None = None,
        on_step: Callable[[float, float], None] | None = None,
        on_start: Callable[[SimJob, float], None] | None = None,
    ) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.device = device
        self.rules = rules
        self.stats = RunStats(name, jobs)
        self._arrivals = sorted(jobs, key=lambda job: (job.trace.t_s, job.trace.index))
        self._next = 0
        self._running: list[SimJob] = []
        self._seq = itertools.count(1)
        self._estimate = estimate
        self._on_step = on_step
        self._on_start = on_start

    @property
    def running(self) -> list[SimJob]:
        """The jobs in the device's batch."""
        return self._running

    def run(self) -> RunStats:
        """Replay every arrival until all jobs finished."""
        now = 0.0
        while self._next < len(self._arrivals) or self._running or self.dispatcher.waiting():
            self._arrive_until(now)
            if not self._running and not self.dispatcher.waiting():
                now = self._arrivals[self._next].trace.t_s
                self._arrive_until(now)
                if self.dispatcher.batching and self.device.batch_window_s > 0:
                    window_end = now + self.device.batch_window_s
                    self._arrive_until(window_end)
                    self.stats.idle_queued_s += window_end - now
                    now = window_end
            now = self._boundary(now)
        return self.stats

    def _arrive_until(self, now: float) -> None:
        while self._next < len(self._arrivals) and self._arrivals[self._next].trace.t_s <= now:
            job = self._arrivals[self._next]
            self._next += 1
            self.dispatcher.arrive(job, job.trace.t_s)
            if self._estimate is not None:
                job.est_wait_s = self._estimate(job, job.trace.t_s)

    def _boundary(self, now: float) -> float:
        """Retire, preempt, admit, then run one step; returns the time after it."""
        if self.dispatcher.preempting:
            self._preempt(now)
        resumed = self._admit(now)
        if not self._running:
            # Nothing may start (every queued user is at their cap): wait for arrivals.
            following = (
                self._arrivals[self._next].trace.t_s if self._next < len(self._arrivals) else now
            )
            self.stats.idle_queued_s += max(0.0, following - now)
            return max(now, following)
        rows = sum(job.rows for job in self._running)
        width, height = self._running[0].shape
        step_s = self.device.step_model.step_s(rows, width, height)
        step_s += RESUME_OVERHEAD_S * resumed
        self._account(now, step_s, rows)
        if self._on_step is not None:
            progress = sum(job.cost_s / job.trace.steps for job in self._running)
            self._on_step(progress, step_s)
        end = now + step_s
        finished = []
        for job in self._running:
            job.steps_done += 1
            job.steps_since_resume += 1
            if job.steps_done >= job.trace.steps:
                job.finish_s = end
                finished.append(job)
        for job in finished:
            self._running.remove(job)
            self.dispatcher.done(job)
        return end

    def _account(self, now: float, step_s: float, rows: int) -> None:
        stats = self.stats
        stats.steps += 1
        stats.jobs_in_steps += len(self._running)
        for job in self._running:
            flow = (job.lane, job.trace.user)
            stats.service.setdefault(flow, []).append((now, step_s * job.rows / rows))
        if self.dispatcher.waiting():
            stats.busy_queued_s += step_s
        else:
            upcoming = (
                self._arrivals[self._next].trace.t_s
                if self._next < len(self._arrivals)
                else math.inf
            )
            if upcoming < now + step_s:
                stats.busy_queued_s += now + step_s - upcoming
        bucket = int(now // BUSY_BUCKET_S)
        stats.busy_buckets[bucket] = stats.busy_buckets.get(bucket, 0.0) + step_s

    def _preempt(self, now: float) -> None:
        head = self.dispatcher.head(now)
        if head is None or not self._running:
            return
        running = [_running(job) for job in self._running]
        wanted = Candidate(head.id, head.rank, head.rows, head.shape)
        chosen = set(victims(wanted, running, self.device.capacity_rows, self.rules))
        for job in [job for job in self._running if job.id in chosen]:
            self._running.remove(job)
            job.preemptions += 1
            job.resumed = True
            self.stats.preemptions += 1
            self.dispatcher.give_back(job, now)

    def _admit(self, now: float) -> int:
        resumed = 0
        capacity = self.device.capacity_rows
        while (head := self.dispatcher.head(now)) is not None:
            if self._running:
                if not self.dispatcher.batching or head.shape != self._running[0].shape:
                    break
                if sum(job.rows for job in self._running) + head.rows > capacity:
                    break
            job = self.dispatcher.take(now)
            if job.first_start_s is None:
                job.first_start_s = now
                if self._on_start is not None:
                    self._on_start(job, now)
            if job.resumed:
                resumed += 1
                job.resumed = False
            job.steps_since_resume = 0
            job.started_seq = next(self._seq)
            self._running.append(job)
        return resumed


# -- building the jobs ------------------------------------------------------------------


def build_jobs(
    trace: Sequence[TraceJob], settings: SchedulerSettings, cost: CostModel, capacity_rows: int
) -> list[SimJob]:
    """Our classifier's lane for every trace job; a job no device can hold is an error."""
    jobs = []
    for item in trace:
        tier = settings.tiers.get(item.tier)
        if tier is None:
            known = ", ".join(sorted(settings.tiers))
            raise BadInputError(f"trace job {item.index}: unknown tier {item.tier!r} ({known})")
        rows = rows_for(item.n, GUIDANCE)
        if rows > capacity_rows:
            raise BadInputError(
                f"trace job {item.index} needs {rows} UNet rows ({item.n} guided samples);"
                f" the simulated device holds {capacity_rows}"
            )
        cost_s = cost.job_cost_s(
            MODEL, steps=item.steps, rows=rows, width=item.width, height=item.height
        )
        decision = classify(cost_s, item.speed, item.tier, tier, settings)
        jobs.append(SimJob(item, decision.lane, cost_s, rows, tier.weight, 0))
    return jobs


def make_dispatcher(name: str, settings: SchedulerSettings) -> Dispatcher:
    """The queue side of the policy called ``name`` (one of :data:`POLICIES`)."""
    if name == "fifo":
        return FifoDispatcher(batching=False, by_lane=False)
    if name == "fifo_batch":
        return FifoDispatcher(batching=True, by_lane=False)
    if name == "priority":
        return FifoDispatcher(batching=True, by_lane=True)
    if name in ("fair_nopreempt", "ours"):
        return FairDispatcher(AgingPolicy.from_settings(settings), preempting=name == "ours")
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


def fair_estimator(
    dispatcher: FairDispatcher, simulator: Simulator, eta: EtaModel, device: DeviceSpec
) -> Callable[[SimJob, float], float]:
    """Start-time estimates as the service makes them (``GenerationService.status``):
    the production EtaModel over the queue's position and per-lane totals, and the
    running batch by the preemption rules."""

    def estimate(job: SimJob, now_s: float) -> float:
        eta.record_arrival(job.lane, job.cost_s, now_s)
        assert job.ticket is not None
        fair = dispatcher.fair
        costs = {lane: sum(t.cost_s for t in fair.queued(lane)) for lane in LANE_ORDER}
        position = fair.position(job.id) or 0
        ahead = queued_ahead_s(job.lane, position, costs, fair.depth(job.lane))
        running = simulator.running
        delay_s = 0.0
        if running:
            width, height = running[0].shape
            step_s = device.step_model.step_s(sum(r.rows for r in running), width, height)
            wanted = Candidate(job.id, rank(job.lane, False), job.rows, job.shape)
            rules = (
                simulator.rules
                if dispatcher.preempting
                else replace(simulator.rules, enabled=False)
            )
            steps = steps_until_start(
                wanted, [_running(r, mid_step=True) for r in running], device.capacity_rows, rules
            )
            # The current step is part way through: count it as half done.
            delay_s = step_s * (steps - 0.5)
        return eta.estimate(job.lane, ahead, job.cost_s, now_s, blocked_s=delay_s).start_in_s

    return estimate


def _running(job: SimJob, *, mid_step: bool = False) -> Running:
    """The job as the preemption rules see it; ``mid_step``: as of the last boundary,
    while the step that boundary started is under way (the simulator counts a step as
    done when it starts)."""
    # Aging decides when a job starts; once running it holds its lane's rank, as in the
    # worker.
    under_way = 1 if mid_step else 0
    return Running(
        job.id,
        rank(job.lane, aged=False),
        job.rows,
        job.shape,
        job.steps_since_resume - under_way,
        job.preemptions,
        job.started_seq,
        job.trace.steps - job.steps_done + under_way,
    )


def run_policy(
    name: str, jobs: list[SimJob], settings: SchedulerSettings, device: DeviceSpec
) -> RunStats:
    """Run policy ``name`` over ``jobs`` on ``device``; ``ours`` also estimates start
    times as the service does."""
    dispatcher = make_dispatcher(name, settings)
    rules = Rules.from_settings(settings)
    if isinstance(dispatcher, FairDispatcher) and dispatcher.preempting:
        eta = EtaModel()

        def started(job: SimJob, now_s: float) -> None:
            if job.est_wait_s is not None:
                eta.record_start(job.lane, job.est_wait_s, now_s - job.trace.t_s)

        simulator = Simulator(
            name, dispatcher, jobs, device, rules, on_step=eta.record_throughput, on_start=started
        )
        simulator._estimate = fair_estimator(dispatcher, simulator, eta, device)
        return simulator.run()
    return Simulator(name, dispatcher, jobs, device, rules).run()


def service_time(step_model: StepTimes) -> Callable[[TraceJob], float]:
    """Seconds each trace job takes running alone under ``step_model``."""

    def alone(job: TraceJob) -> float:
        rows = rows_for(job.n, GUIDANCE)
        return job.steps * step_model.step_s(rows, job.width, job.height)

    return alone
