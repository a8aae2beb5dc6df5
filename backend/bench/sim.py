"""``imagine bench scheduler``: replay one trace through several scheduling policies on
a simulated device, and measure waits, slowdowns, utilization and fairness.

The policies ``fair_nopreempt`` and ``ours`` run the production policy code itself:
lanes from :mod:`backend.scheduling.lanes`, fair queuing and aging from
:class:`backend.scheduling.fairness.FairQueue`, eviction choices from
:mod:`backend.scheduling.preemption`, and start-time estimates from
:mod:`backend.scheduling.eta`, all with the scheduler settings' values. The baselines
are the textbook schedulers they are measured against: ``fifo`` (one job at a time),
``fifo_batch``, ``priority`` (strict lanes, FIFO in each) and ``srpt`` (preemptive
shortest remaining work first, no fairness), all batching but ``fifo``. Every policy sees the
same jobs in the same lanes (our classifier assigns them), on the same simulated device.

The device runs one batch at a time, of one latent shape, one denoising step per
iteration; jobs join and leave at step boundaries (continuous batching) and a step
of ``rows`` rows takes ``StepModel.step_s(rows, width, height)`` seconds, plus the
checkpoint save and load times of the jobs evicted and resumed at its boundary. A
preempting policy pauses the jobs that make way in place while the device has room
(``DeviceSpec.pause_rows``; a paused job keeps its latents and costs no checkpoint)
and evicts the rest; a paused job resumes on the device when it is the most urgent
contender again. Under ``ours``, work below the realtime lane joins a running batch
only while batching pays (``batch_min_gain``), as the worker claims it. The
policies' queues are in :mod:`backend.bench.policies`; arrivals pass the production
admission control first (:mod:`backend.bench.admit`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from backend.bench.admit import SimAdmission
from backend.bench.device import DeviceSpec
from backend.bench.policies import (
    Dispatcher,
    FairDispatcher,
    SimJob,
    make_dispatcher,
    remaining_s,
)
from backend.bench.trace import TraceJob
from backend.errors import BadInputError
from backend.models import Lane
from backend.scheduling.eta import EtaModel, queued_ahead_s
from backend.scheduling.fairness import LANE_ORDER
from backend.scheduling.lanes import CostModel, StepTimes, batching_pays, classify, rows_for
from backend.scheduling.preemption import (
    Candidate,
    Rules,
    Running,
    joins_when_it_fits,
    rank,
    steps_until_start,
    victims,
    yields,
)
from config.settings import SchedulerSettings

GUIDANCE = 7.0
MODEL = "sim"
BUSY_BUCKET_S = 60.0


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
    pauses: int = 0
    busy_buckets: dict[int, float] = field(default_factory=dict)
    # Per (lane, user): (time, device-seconds) of each step their jobs were served in.
    service: dict[tuple[Lane, str], list[tuple[float, float]]] = field(default_factory=dict)
    overhead_s: list[float] = field(default_factory=list)
    # Jobs admission turned away; ``jobs`` holds the admitted ones once the run ends.
    refused: list[SimJob] = field(default_factory=list)


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
        admission: SimAdmission | None = None,
        join_min_gain: float = 0.0,
    ) -> None:
        self.name = name
        self.dispatcher = dispatcher
        self.device = device
        self.rules = rules
        self.stats = RunStats(name, jobs)
        self._arrivals = sorted(jobs, key=lambda job: (job.trace.t_s, job.trace.index))
        self._next = 0
        self._running: list[SimJob] = []
        self._paused: list[SimJob] = []
        self._seq = itertools.count(1)
        self._estimate = estimate
        self._on_step = on_step
        self._on_start = on_start
        self._admission = admission
        self._saving_s = 0.0
        self._join_min_gain = join_min_gain

    @property
    def running(self) -> list[SimJob]:
        """The jobs in the device's batch."""
        return self._running

    def run(self) -> RunStats:
        """Replay every arrival until all jobs finished."""
        now = 0.0
        while True:
            self._arrive_until(now)
            if not self._running and not self._paused and not self.dispatcher.waiting():
                if self._next >= len(self._arrivals):
                    break  # the last arrivals may all have been refused
                now = self._arrivals[self._next].trace.t_s
                self._arrive_until(now)
                if self.dispatcher.batching and self.device.batch_window_s > 0:
                    window_end = now + self.device.batch_window_s
                    self._arrive_until(window_end)
                    self.stats.idle_queued_s += window_end - now
                    now = window_end
            now = self._boundary(now)
        self.stats.jobs = [job for job in self.stats.jobs if job.refused is None]
        return self.stats

    def _arrive_until(self, now: float) -> None:
        while self._next < len(self._arrivals) and self._arrivals[self._next].trace.t_s <= now:
            job = self._arrivals[self._next]
            self._next += 1
            if self._admission is not None:
                job.refused = self._admission.check(job.trace.user, job.trace.tier, job.trace.t_s)
                if job.refused is not None:
                    self.stats.refused.append(job)
                    continue
                self._admission.queued(job.trace.user)
            self.dispatcher.arrive(job, job.trace.t_s)
            if self._estimate is not None:
                job.est_wait_s = self._estimate(job, job.trace.t_s)

    def _boundary(self, now: float) -> float:
        """Retire, preempt, admit, then run one step; returns the time after it."""
        if self.dispatcher.preempting:
            self._preempt(now)
        resumed_s = self._admit(now)
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
        # Checkpoints saved at this boundary and loaded for rejoining jobs hold the step.
        step_s += resumed_s + self._saving_s
        self._saving_s = 0.0
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
        if not self._running:
            return
        contender = self._contender(now)
        if contender is None:
            return
        job = contender[0]
        running = [_running(one, self.dispatcher.urgency(one)) for one in self._running]
        room = self.device.pause_rows - sum(one.rows for one in self._paused)
        plan = victims(_candidate(job), running, self.device.capacity_rows, self.rules, room)
        for victim in [one for one in self._running if one.id in plan.pause]:
            self._running.remove(victim)
            victim.pauses += 1
            self.stats.pauses += 1
            self._paused.append(victim)
            self.dispatcher.paused(victim)
        for victim in [one for one in self._running if one.id in plan.evict]:
            self._running.remove(victim)
            victim.preemptions += 1
            victim.resumed = True
            self._saving_s += self.device.resume_costs.save_s(victim.trace.n, *victim.shape)
            self.stats.preemptions += 1
            self.dispatcher.give_back(victim, now)
            if self._admission is not None:
                self._admission.queued(victim.trace.user)

    def _contender(self, now: float) -> tuple[SimJob, bool] | None:
        """The job that should have the device next, and whether it is a paused one: the
        most urgent paused job, unless the queue's head would preempt it."""
        head = self.dispatcher.head(now)
        if not self._paused:
            return None if head is None else (head, False)
        paused = min(
            self._paused,
            key=lambda one: (self.dispatcher.urgency(one), remaining_s(one), one.started_seq),
        )
        paused.rank = self.dispatcher.urgency(paused)
        if head is not None and yields(
            _running(paused, paused.rank), _candidate(head), self.rules, pause=True
        ):
            return head, False
        return paused, True

    def joins(self, job: SimJob, job_rank: int) -> bool:
        """Whether ``job``, of ``job_rank``, may join the running batch of its shape:
        realtime and aged work always, other work while joining saves
        ``batch_min_gain`` of the device time (by the step model)."""
        if joins_when_it_fits(job_rank):
            return True
        width, height = job.shape
        return batching_pays(
            lambda rows: self.device.step_model.step_s(rows, width, height),
            sum(one.rows for one in self._running),
            job.rows,
            self._join_min_gain,
        )

    def _admit(self, now: float) -> float:
        resumed_s = 0.0
        capacity = self.device.capacity_rows
        while (contender := self._contender(now)) is not None:
            head, paused = contender
            if self._running:
                if not self.dispatcher.batching or head.shape != self._running[0].shape:
                    break
                if sum(job.rows for job in self._running) + head.rows > capacity:
                    break
                if not self.joins(head, head.rank):
                    break
            if paused:
                self._paused.remove(head)
                self.dispatcher.resumed(head)
                job = head
            else:
                job = self.dispatcher.take(now)
                if self._admission is not None:
                    self._admission.dequeued(job.trace.user)
            if job.first_start_s is None:
                job.first_start_s = now
                if self._on_start is not None:
                    self._on_start(job, now)
            if job.resumed:
                resumed_s += self.device.resume_costs.load_s(job.trace.n, *job.shape)
                job.resumed = False
            job.steps_since_resume = 0
            job.started_seq = next(self._seq)
            self._running.append(job)
        return resumed_s


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
        jobs.append(SimJob(item, decision.lane, cost_s, rows, tier.weight, tier.max_running))
    return jobs


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
            wanted = replace(_candidate(job), rank=rank(job.lane, False))
            rules = (
                simulator.rules
                if dispatcher.preempting
                else replace(simulator.rules, enabled=False)
            )
            steps = steps_until_start(
                wanted,
                [_running(r, dispatcher.urgency(r), mid_step=True) for r in running],
                device.capacity_rows,
                rules,
                device.pause_rows,
                joins=simulator.joins(job, wanted.rank),
            )
            # The current step is part way through: count it as half done.
            delay_s = step_s * (steps - 0.5)
        return eta.estimate(job.lane, ahead, job.cost_s, now_s, blocked_s=delay_s).start_in_s

    return estimate


def _running(job: SimJob, urgency: int, *, mid_step: bool = False) -> Running:
    """The job as the preemption rules see it; ``mid_step``: as of the last boundary,
    while the step that boundary started is under way (the simulator counts a step as
    done when it starts)."""
    under_way = 1 if mid_step else 0
    return Running(
        job.id,
        urgency,
        job.rows,
        job.shape,
        job.steps_since_resume - under_way,
        job.preemptions,
        job.started_seq,
        job.trace.steps - job.steps_done + under_way,
        remaining_s(job) + under_way * job.cost_s / job.trace.steps,
    )


def _candidate(job: SimJob) -> Candidate:
    """The job as the preemption rules see a waiting one (its rank set by ``head``)."""
    return Candidate(job.id, job.rank, job.rows, job.shape, remaining_s(job))


def run_policy(
    name: str,
    jobs: list[SimJob],
    settings: SchedulerSettings,
    device: DeviceSpec,
    admission: SimAdmission | None = None,
) -> RunStats:
    """Run policy ``name`` over ``jobs`` on ``device``, behind ``admission`` if given;
    ``ours`` also estimates start times as the service does."""
    dispatcher = make_dispatcher(name, settings)
    rules = Rules.from_settings(settings)
    if isinstance(dispatcher, FairDispatcher) and dispatcher.preempting:
        eta = EtaModel()

        def started(job: SimJob, now_s: float) -> None:
            if job.est_wait_s is not None:
                eta.record_start(job.lane, job.est_wait_s, now_s - job.trace.t_s)

        simulator = Simulator(
            name,
            dispatcher,
            jobs,
            device,
            rules,
            on_step=eta.record_throughput,
            on_start=started,
            admission=admission,
            join_min_gain=settings.batch_min_gain,
        )
        simulator._estimate = fair_estimator(dispatcher, simulator, eta, device)
        return simulator.run()
    return Simulator(name, dispatcher, jobs, device, rules, admission=admission).run()


def service_time(step_model: StepTimes) -> Callable[[TraceJob], float]:
    """Seconds each trace job takes running alone under ``step_model``."""

    def alone(job: TraceJob) -> float:
        rows = rows_for(job.n, GUIDANCE)
        return job.steps * step_model.step_s(rows, job.width, job.height)

    return alone
