"""The service facade the bot and the CLI talk to: submit, follow, look up."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import structlog

from backend.admission.limits import Admission
from backend.catalog import ModelCatalog
from backend.clock import monotonic_s, usage_month, wall_ms
from backend.degrade.ladder import Level, Restrictions
from backend.errors import BackendError, BadInputError, JobFailedError
from backend.events.base import EventBus, EventKind, JobEvent, Subscription
from backend.models import SEED_MAX, Job, JobSpec, JobState, Lane
from backend.queue.base import LANE_ORDER, JobQueue
from backend.scheduling.eta import EtaModel, queued_ahead_s, stalled_slot
from backend.scheduling.lanes import CostModel, LaneDecision, StepModel, classify, rows_for
from config.settings import EngineSettings, SchedulerSettings, TierSettings
from storage.db import Database
from storage.repos.jobs import JobRow

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job's images: the grid, then one path per sample."""

    job_id: str
    grid_path: str
    sample_paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """Where a queued job stands: its place in its lane (0: next) and when it should
    start and finish, in seconds from now."""

    job_id: str
    lane: Lane
    position: int
    start_in_s: float
    finish_in_s: float


class JobKind(StrEnum):
    """How a job came about: a fresh prompt, or a follow-up of a finished one."""

    IMAGINE = "imagine"
    VARIATION = "variation"
    UPSCALE = "upscale"
    REROLL = "reroll"


@dataclass(frozen=True, slots=True)
class JobView:
    """What a front end may know of a stored job: its request, where it stands, and
    its images once it succeeded (the grid first, then one path per sample)."""

    id: str
    kind: JobKind
    parent_job_id: str | None
    user_id: int
    guild_id: int | None
    channel_id: int | None
    spec: JobSpec
    lane: Lane
    state: JobState
    speed: str | None
    step: int
    total_steps: int
    error: str | None
    submitted_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None
    images: tuple[str, ...] = ()


# Estimates kept for the correction, per job, until the job starts (bounded).
MAX_TRACKED_ESTIMATES = 100_000
UNRESTRICTED = Restrictions(Level.NORMAL)


class GenerationService:
    """Validates, records and queues jobs; reports their progress.

    Reads the scheduler settings (tiers, lanes, the cost model) and the engine
    settings (rows per device, follow-up strengths); models come from the catalog.
    ``restrictions`` gives the degradation level's restrictions at each submit.
    ``shared_lease_s`` is the queue's lease when other processes' workers hold leases
    too (Redis); None when only this process's workers can (the memory queue).
    """

    def __init__(
        self,
        scheduler: SchedulerSettings,
        engine: EngineSettings,
        db: Database,
        queue: JobQueue,
        catalog: ModelCatalog,
        events: EventBus,
        *,
        cost: CostModel | None = None,
        admission: Admission | None = None,
        restrictions: Callable[[], Restrictions] = lambda: UNRESTRICTED,
        shared_lease_s: float | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.engine = engine
        self.db = db
        self.queue = queue
        self.catalog = catalog
        self.events = events
        self.cost = cost or CostModel(StepModel.from_settings(scheduler))
        self.admission = admission
        # The degradation ladder's light level runs fewer steps than asked for.
        self._restrictions = restrictions
        self.eta = EtaModel()
        # Seconds until a device could take a job (the local workers'), if known.
        self.device_delay_s: Callable[[Job], float] | None = None
        # Whether one of this process's workers holds a job (they renew its lease).
        self.held_here: Callable[[str], bool] = lambda _job_id: False
        self.shared_lease_s = shared_lease_s
        self._estimated: dict[str, float] = {}

    async def submit(
        self,
        spec: JobSpec,
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        job_id: str | None = None,
        kind: JobKind = JobKind.IMAGINE,
        parent_job_id: str | None = None,
        meta: dict[str, Any] | None = None,
        role_tier: str | None = None,
    ) -> Job:
        """Record and enqueue a job; an unknown model is refused before anything is stored.

        Pass a ``job_id`` from :meth:`new_job_id` to :meth:`follow` the job before it starts.
        ``meta`` carries an image-to-image job's ``source_image`` path and ``strength``.
        ``role_tier`` is the tier the user's chat roles give; a tier assigned in the
        database wins over it.
        """
        self.catalog.get(spec.model)
        tier_name, tier = await self._tier(user_id, role_tier)
        resolved = self.catalog.resolve(spec)
        restricted = self._restrictions()
        # Only a degraded level rewrites the spec, so steps a prompt left to the model
        # are stored unset otherwise.
        if restricted.steps_factor < 1.0 and resolved.steps is not None:
            spec = replace(spec, steps=restricted.apply_steps(resolved.steps))
            resolved = replace(resolved, steps=spec.steps)
        decision = await self._classify(resolved, user_id, tier_name, tier)
        if self.admission is not None:
            await self.admission.admit(
                user_id=user_id,
                tier=tier_name,
                guild_id=guild_id,
                queued_for_user=await self.db.jobs.count_waiting(user_id),
            )
        job = Job(
            id=job_id or self.new_job_id(),
            spec=spec,
            user_id=user_id,
            tier=tier_name,
            lane=decision.lane,
            guild_id=guild_id,
            channel_id=channel_id,
            submitted_at_ms=wall_ms(),
            meta={
                **(meta or {}),
                "speed": decision.speed.value,
                **({"role_tier": role_tier} if role_tier is not None else {}),
            },
            cost_s=decision.cost_s,
            weight=tier.weight,
            max_running=tier.max_running,
        )
        await self.db.jobs.insert(
            job.id,
            user_id,
            spec.to_json(),
            job.lane.value,
            guild_id=guild_id,
            channel_id=channel_id,
            kind=kind.value,
            parent_job_id=parent_job_id,
            meta=job.meta,
        )
        # Marked queued first: a worker may claim it the moment it is enqueued.
        await self.db.jobs.mark_queued(job.id)
        await self.queue.enqueue(job)
        self.eta.record_arrival(job.lane, job.cost_s, monotonic_s())
        status = await self._status_of(job)
        start_in_s = status.start_in_s if status is not None else None
        if start_in_s is not None and len(self._estimated) < MAX_TRACKED_ESTIMATES:
            self._estimated[job.id] = start_in_s
        self.events.publish(JobEvent(job.id, EventKind.QUEUED, eta_s=start_in_s, at_ms=wall_ms()))
        log.info(
            "job_queued",
            job_id=job.id,
            user_id=user_id,
            tier=tier_name,
            lane=job.lane.value,
            cost_s=round(decision.cost_s, 3),
            why=decision.reason,
            position=status.position if status is not None else None,
            start_in_s=round(start_in_s, 1) if start_in_s is not None else None,
        )
        return job

    def restrictions(self) -> Restrictions:
        """What the degradation level in force restricts right now."""
        return self._restrictions()

    async def status(self, job_id: str) -> QueueStatus | None:
        """A queued job's position and estimated start and finish; None unless queued."""
        row = await self.db.jobs.get(job_id)
        if row is None or row.state != JobState.QUEUED:
            return None
        job = await self._job_of(row)
        return await self._status_of(job)

    async def _status_of(self, job: Job) -> QueueStatus | None:
        """From the queue's position and queued work per lane (see
        :func:`backend.scheduling.eta.queued_ahead_s`) and the local devices' running
        batches."""
        position = await self.queue.position(job.id)
        if position is None:
            return None
        # Lower lanes' work is not ahead of it: no round trip for their totals.
        lanes = LANE_ORDER[: LANE_ORDER.index(job.lane) + 1]
        costs = {lane: await self.queue.queued_cost_s(lane) for lane in lanes}
        depth = await self.queue.depth(job.lane)
        ahead_s = queued_ahead_s(job.lane, position, costs, depth)
        blocked_s = self.device_delay_s(job) if self.device_delay_s is not None else 0.0
        slot_wait_s, slot_work_s = await self._stalled_slot(job)
        estimate = self.eta.estimate(
            job.lane,
            ahead_s,
            job.cost_s,
            monotonic_s(),
            blocked_s=blocked_s,
            slot_wait_s=slot_wait_s,
            slot_work_s=slot_work_s,
        )
        return QueueStatus(job.id, job.lane, position, estimate.start_in_s, estimate.finish_in_s)

    async def _stalled_slot(self, job: Job) -> tuple[float, float]:
        """How long the user's running slot stays taken by leases no worker of this
        process holds (see :func:`backend.scheduling.eta.stalled_slot`).

        Until workers report liveness, a lease held elsewhere counts as stalled: a
        dead worker's lease blocks the slot for the whole lease, and nothing here tells
        it apart from a live worker in another process.
        """
        if self.shared_lease_s is None or job.max_running <= 0:
            return 0.0, 0.0
        stalled = [
            row
            for row in await self.db.jobs.list_by_state(JobState.RUNNING)
            if row.user_id == job.user_id and not self.held_here(row.id)
        ]
        if len(stalled) < job.max_running:
            return 0.0, 0.0
        return stalled_slot(
            [self._stored_cost_s(row) for row in stalled], job.max_running, self.shared_lease_s
        )

    def _stored_cost_s(self, row: JobRow) -> float:
        """A stored job's estimated cost; 0 when its spec no longer resolves."""
        try:
            return self._cost_s(self.catalog.resolve(JobSpec.from_json(row.spec_json)))
        except (BackendError, ValueError, KeyError, TypeError):
            return 0.0

    def job_started(self, job: Job, waited_s: float) -> None:
        """A job took its first step after ``waited_s``: teach the estimate its error."""
        estimated = self._estimated.pop(job.id, None)
        if estimated is not None:
            self.eta.record_start(job.lane, estimated, waited_s)

    def record_step(self, solo_work_s: float, step_s: float) -> None:
        """A device step did ``solo_work_s`` of work (solo device-seconds) in ``step_s``."""
        self.eta.record_throughput(solo_work_s, step_s)

    async def tier_of(self, user_id: int, role_tier: str | None = None) -> str:
        """The tier the user's jobs run under: an assigned one, else ``role_tier``, else
        the default (see :meth:`submit`)."""
        name, _tier = await self._tier(user_id, role_tier)
        return name

    async def _tier(self, user_id: int, role_tier: str | None = None) -> tuple[str, TierSettings]:
        """The user's tier (created on first sight): the one assigned in the database,
        else the one their roles give, else the default; a tier the settings no longer
        declare counts as the default tier."""
        user = await self.db.users.ensure(user_id)
        tiers = self.scheduler.tiers
        if user.tier_set_by is not None and user.tier in tiers:
            name = user.tier
        elif role_tier is not None and role_tier in tiers:
            name = role_tier
        else:
            name = self.scheduler.default_tier
        return name, tiers[name]

    def _cost_s(self, resolved: JobSpec) -> float:
        """Estimated device-seconds of a catalog-resolved spec running alone."""
        assert resolved.model is not None
        assert resolved.steps is not None
        return self.cost.job_cost_s(
            resolved.model,
            steps=resolved.steps,
            rows=rows_for(resolved.n, resolved.guidance),
            width=resolved.width,
            height=resolved.height,
        )

    async def _classify(
        self, spec: JobSpec, user_id: int, tier_name: str, tier: TierSettings
    ) -> LaneDecision:
        """The lane from the estimated cost, the requested speed, the tier and what is
        left of the user's fast budget this month; a job no device holds is refused."""
        rows = rows_for(spec.n, spec.guidance)
        limit = self.engine.max_batch_rows
        if rows > limit:
            raise BadInputError(
                f"this job needs {rows} UNet rows ({spec.n} samples"
                f"{', guided' if rows > spec.n else ''}); a device holds at most {limit}:"
                " ask for fewer samples with --n"
            )
        cost_s = self._cost_s(spec)
        fast_left = None
        if tier.fast_budget_gpu_s is not None:
            used = await self.db.usage.get(user_id, usage_month(wall_ms()))
            fast_left = tier.fast_budget_gpu_s - used.fast_gpu_s
        return classify(cost_s, spec.speed, tier_name, tier, self.scheduler, fast_left_s=fast_left)

    async def reconcile(self, *, running: bool = True) -> int:
        """Bring the queue in line with SQLite at start-up; returns how many jobs were
        queued.

        Jobs SQLite holds as queued or running that the queue lost (after a Redis
        flush, or any restart of the memory queue) are enqueued again; enqueue is
        idempotent, so jobs the queue still has stay as they are, and a re-enqueued job
        resumes from the checkpoint SQLite kept for it, if any. A job still
        ``submitted`` was recorded but never queued (the process stopped in between):
        it is queued now, as its submit meant to. A job that can no longer be rebuilt
        (its spec unreadable, its model gone from the settings) fails with the reason,
        so that it neither stops the start nor counts against its user's queue.

        ``running=False`` leaves running jobs to their workers (Redis lost its data
        while this process runs): a live worker queues its job anew at its next renewal,
        with its latest checkpoint, and a second copy would only race it.
        """
        restored = 0
        states = [JobState.SUBMITTED, JobState.QUEUED]
        if running:
            states.append(JobState.RUNNING)
        for row in await self.db.jobs.list_by_state(*states):
            if await self._reconcile_one(row):
                restored += 1
        return restored

    async def _reconcile_one(self, row: JobRow) -> bool:
        """Queue one stored job the queue may have lost; whether it was queued."""
        try:
            job = await self._job_of(row)
        except (BackendError, ValueError, KeyError, TypeError) as exc:
            reason = f"could not be queued again: {exc}"
            await self.db.jobs.mark_finished(row.id, JobState.FAILED, reason)
            log.error("job_unrecoverable", job_id=row.id, was=row.state, error=str(exc))
            return False
        if row.state == JobState.SUBMITTED:
            # As submit does: marked queued first, since a worker may claim it at once.
            await self.db.jobs.mark_queued(row.id)
        if not await self.queue.enqueue(job):
            return False
        if row.state == JobState.RUNNING:
            await self.db.jobs.mark_queued(row.id)
        log.warning("job_reconciled", job_id=row.id, was=row.state)
        return True

    async def _job_of(self, row: JobRow) -> Job:
        """The queue's view of a stored job, with its tier and cost as of now."""
        tier_name, tier = await self._tier(row.user_id, row.meta.get("role_tier"))
        spec = JobSpec.from_json(row.spec_json)
        return Job(
            id=row.id,
            spec=spec,
            user_id=row.user_id,
            tier=tier_name,
            lane=Lane(row.lane),
            guild_id=row.guild_id,
            channel_id=row.channel_id,
            submitted_at_ms=row.submitted_at_ms,
            meta=row.meta,
            cost_s=self._cost_s(self.catalog.resolve(spec)),
            weight=tier.weight,
            max_running=tier.max_running,
        )

    async def derive(
        self,
        parent_job_id: str,
        kind: JobKind,
        *,
        user_id: int,
        index: int | None = None,
        job_id: str | None = None,
        rng: random.Random | None = None,
        role_tier: str | None = None,
    ) -> Job:
        """Submit a follow-up of a finished job: a variation or an upscale of sample
        ``index`` (0-based), or a reroll (same spec, new seed)."""
        parent = await self.db.jobs.get(parent_job_id)
        if parent is None:
            raise BadInputError(f"no job {parent_job_id!r}")
        if parent.state != JobState.SUCCEEDED:
            raise BadInputError(f"job {parent_job_id!r} has no images (it is {parent.state})")
        spec = JobSpec.from_json(parent.spec_json)
        seed = (rng or random.SystemRandom()).randrange(SEED_MAX + 1)
        meta: dict[str, Any] = {}
        if kind is JobKind.REROLL:
            derived = replace(spec, seed=seed)
        else:
            if index is None or not 0 <= index < spec.n:
                raise BadInputError(f"sample index must be 0..{spec.n - 1}, got {index}")
            image = await self.db.images.get(parent_job_id, index)
            if image is None:
                raise BadInputError(f"job {parent_job_id!r} has no sample {index + 1}")
            meta["source_image"] = image.path
            engine = self.engine
            if kind is JobKind.VARIATION:
                meta["strength"] = engine.variation_strength
                derived = replace(spec, seed=seed)
            elif kind is JobKind.UPSCALE:
                meta["strength"] = engine.upscale_strength
                factor = engine.upscale_factor
                derived = replace(
                    spec,
                    seed=(spec.seed + index) % (SEED_MAX + 1),
                    width=spec.width * factor,
                    height=spec.height * factor,
                    n=1,
                )
            else:
                raise BadInputError(f"cannot derive a {kind.value} job")
        return await self.submit(
            derived,
            user_id=user_id,
            guild_id=parent.guild_id,
            channel_id=parent.channel_id,
            job_id=job_id,
            kind=kind,
            parent_job_id=parent_job_id,
            meta=meta,
            role_tier=role_tier,
        )

    async def cancel(self, job_id: str) -> bool:
        """Stop a queued or running job; False if it had already ended.

        A queued job is dropped and recorded cancelled at once (its followers get the
        final event); a running one is flagged, and its worker stops it at its next
        check and records the cancellation.
        """
        row = await self.db.jobs.get(job_id)
        if row is None:
            raise BadInputError(f"no job {job_id!r}")
        if JobState(row.state).is_final:
            return False
        await self.queue.cancel(job_id)
        # Still leased (running, or claimed a moment ago): its worker records the end.
        if await self.queue.position(job_id) is None and await self.db.jobs.cancel_waiting(job_id):
            self._estimated.pop(job_id, None)
            self.events.publish(JobEvent(job_id, EventKind.CANCELLED, at_ms=wall_ms()))
            log.info("job_cancelled", job_id=job_id, was=row.state)
        return True

    async def job(self, job_id: str) -> JobView | None:
        """The stored job, or None if there is none with that id."""
        row = await self.db.jobs.get(job_id)
        return await self._view(row) if row is not None else None

    async def jobs_of(
        self, user_id: int, *, limit: int = 20, active: bool = False
    ) -> list[JobView]:
        """The user's most recent jobs, newest first; ``active``: only those not ended."""
        states = [state.value for state in JobState if not state.is_final] if active else []
        rows = await self.db.jobs.list_for_user(user_id, limit, states=states)
        return [await self._view(row) for row in rows]

    async def _view(self, row: JobRow) -> JobView:
        images: tuple[str, ...] = ()
        if row.state == JobState.SUCCEEDED:
            stored = sorted(await self.db.images.list_for_job(row.id), key=lambda i: i.idx)
            images = tuple(image.path for image in stored)
        return JobView(
            id=row.id,
            kind=JobKind(row.kind),
            parent_job_id=row.parent_job_id,
            user_id=row.user_id,
            guild_id=row.guild_id,
            channel_id=row.channel_id,
            spec=JobSpec.from_json(row.spec_json),
            lane=Lane(row.lane),
            state=JobState(row.state),
            speed=row.meta.get("speed"),
            step=row.step,
            total_steps=row.total_steps,
            error=row.error,
            submitted_at_ms=row.submitted_at_ms,
            started_at_ms=row.started_at_ms,
            finished_at_ms=row.finished_at_ms,
            images=images,
        )

    @staticmethod
    def new_job_id() -> str:
        """A fresh job id, to :meth:`follow` a job before submitting it."""
        return uuid.uuid4().hex

    def follow(self, job_id: str) -> Subscription:
        """Subscribe to a job's events; subscribe before it can finish to miss nothing."""
        return self.events.subscribe(job_id)

    async def wait(self, subscription: Subscription) -> JobResult:
        """Wait for the job's final event; raises JobFailedError if it failed."""
        async for event in subscription:
            if event.kind.is_final:
                return self.result_of(event)
        raise JobFailedError(subscription.job_id or "?", "event stream ended")

    @staticmethod
    def result_of(event: JobEvent) -> JobResult:
        """The images of a job's final event; raises JobFailedError unless it succeeded."""
        if event.kind is not EventKind.SUCCEEDED:
            raise JobFailedError(event.job_id, event.error or event.kind.value)
        return JobResult(event.job_id, event.images[0], event.images[1:])
