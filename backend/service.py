"""The service facade the bot and the CLI talk to: submit, follow, look up."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from backend.catalog import ModelCatalog
from backend.clock import wall_ms
from backend.errors import JobFailedError
from backend.events import EventBus, EventKind, JobEvent, Subscription
from backend.models import Job, JobSpec, Lane, Speed
from backend.queue.base import JobQueue
from storage.db import Database

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job's images: the grid, then one path per sample."""

    job_id: str
    grid_path: str
    sample_paths: tuple[str, ...]


def lane_for(spec: JobSpec) -> Lane:
    """The lane a spec asks for (the scheduler's cost-based classifier refines this)."""
    if spec.speed is Speed.RELAX:
        return Lane.BATCH
    return Lane.REALTIME


class GenerationService:
    """Validates, records and queues jobs; reports their progress."""

    def __init__(
        self, db: Database, queue: JobQueue, catalog: ModelCatalog, events: EventBus
    ) -> None:
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
    ) -> Job:
        """Record and enqueue a job; an unknown model is refused before anything is stored.

        Pass a ``job_id`` from :meth:`new_job_id` to :meth:`follow` the job before it starts.
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
        )
        await self.db.jobs.insert(
            job.id,
            user_id,
            spec.to_json(),
            job.lane.value,
            guild_id=guild_id,
            channel_id=channel_id,
        )
        # Marked queued first: a worker may claim it the moment it is enqueued.
        await self.db.jobs.mark_queued(job.id)
        await self.queue.enqueue(job)
        self.events.publish(JobEvent(job.id, EventKind.QUEUED, at_ms=wall_ms()))
        log.info("job_queued", job_id=job.id, user_id=user_id, lane=job.lane.value)
        return job

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
