"""The service facade the bot and the CLI talk to: submit, follow, look up."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import structlog

from backend.catalog import ModelCatalog
from backend.clock import wall_ms
from backend.errors import BadInputError, JobFailedError
from backend.events import EventBus, EventKind, JobEvent, Subscription
from backend.models import SEED_MAX, Job, JobSpec, Lane, Speed
from backend.queue.base import JobQueue
from config.settings import Settings
from storage.db import Database

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job's images: the grid, then one path per sample."""

    job_id: str
    grid_path: str
    sample_paths: tuple[str, ...]


class JobKind(StrEnum):
    IMAGINE = "imagine"
    VARIATION = "variation"
    UPSCALE = "upscale"
    REROLL = "reroll"


def lane_for(spec: JobSpec) -> Lane:
    """The lane a spec asks for (the scheduler's cost-based classifier refines this)."""
    if spec.speed is Speed.RELAX:
        return Lane.BATCH
    return Lane.REALTIME


class GenerationService:
    """Validates, records and queues jobs; reports their progress."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        queue: JobQueue,
        catalog: ModelCatalog,
        events: EventBus,
    ) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.catalog = catalog
        self.events = events

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
    ) -> Job:
        """Record and enqueue a job; an unknown model is refused before anything is stored.

        Pass a ``job_id`` from :meth:`new_job_id` to :meth:`follow` the job before it starts.
        ``meta`` carries an image-to-image job's ``source_image`` path and ``strength``.
        """
        self.catalog.get(spec.model)
        job = Job(
            id=job_id or self.new_job_id(),
            spec=spec,
            user_id=user_id,
            lane=lane_for(spec),
            guild_id=guild_id,
            channel_id=channel_id,
            submitted_at_ms=wall_ms(),
            meta=dict(meta or {}),
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
        )
        # Marked queued first: a worker may claim it the moment it is enqueued.
        await self.db.jobs.mark_queued(job.id)
        await self.queue.enqueue(job)
        self.events.publish(JobEvent(job.id, EventKind.QUEUED, at_ms=wall_ms()))
        log.info("job_queued", job_id=job.id, user_id=user_id, lane=job.lane.value)
        return job

    async def derive(
        self,
        parent_job_id: str,
        kind: JobKind,
        *,
        user_id: int,
        index: int | None = None,
        job_id: str | None = None,
        rng: random.Random | None = None,
    ) -> Job:
        """Submit a follow-up of a finished job: a variation or an upscale of sample
        ``index`` (0-based), or a reroll (same spec, new seed)."""
        parent = await self.db.jobs.get(parent_job_id)
        if parent is None:
            raise BadInputError(f"no job {parent_job_id!r}")
        if parent.state != "succeeded":
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
            engine = self.settings.engine
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
        )

    @staticmethod
    def new_job_id() -> str:
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
        if event.kind is not EventKind.SUCCEEDED:
            raise JobFailedError(event.job_id, event.error or event.kind.value)
        return JobResult(event.job_id, event.images[0], event.images[1:])
