"""Admin operations on the running service, for a front end: the degradation level,
pausing and purging lanes, models on this process's devices, and statistics.

Every change is written to the audit log with who did it. Pauses are kept in SQLite,
so they survive a restart; they apply to the devices of the processes that read them
at start-up or that were paused here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from backend.clock import wall_ms
from backend.community import record_admin_action
from backend.degrade.ladder import Level
from backend.errors import BadInputError
from backend.models import JobState, Lane
from backend.queue.base import LANE_ORDER
from backend.stats import percentile

if TYPE_CHECKING:
    from backend.catalog import ModelCatalog
    from backend.degrade.controller import DegradeController
    from backend.queue.base import JobQueue
    from backend.service import GenerationService
    from storage.db import Database


@dataclass(frozen=True, slots=True)
class DegradeStatus:
    """The level in force, the admin's pin (None: the load decides) and the load's own."""

    level: Level
    override: Level | None
    auto_level: Level
    restricts: str


@dataclass(frozen=True, slots=True)
class LaneStats:
    """One lane now and today: queued jobs and the p95 wait of today's starts."""

    lane: Lane
    queued: int
    p95_wait_s: float | None
    paused: bool


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """What ``/admin stats`` shows."""

    lanes: tuple[LaneStats, ...]
    busy_fraction: float | None
    jobs_today: int
    failed_today: int
    # Since this process started, on its devices.
    preemptions: int
    level: Level
    loaded_models: tuple[str, ...]


PAUSED_LANES_KEY = "paused_lanes"


async def load_paused_lanes(db: Database) -> set[Lane]:
    """The lanes an admin paused, as stored (unknown names are dropped)."""
    stored = await db.state.get(PAUSED_LANES_KEY)
    names = stored if isinstance(stored, list) else []
    return {Lane(name) for name in names if name in {lane.value for lane in Lane}}


class Device(Protocol):
    """What the statistics read of a local device worker."""

    @property
    def busy(self) -> bool:
        """Whether it holds a job."""
        ...

    @property
    def preemptions(self) -> int:
        """Jobs it took off the device for more urgent ones, since it started."""
        ...


class Registry(Protocol):
    """What model load and unload need of a local device's model registry."""

    @property
    def device(self) -> Any:
        """The device it loads models on."""
        ...

    @property
    def loaded(self) -> list[str]:
        """The loaded models."""
        ...

    def runtime(self, name: str) -> object:
        """Load ``name`` (if it is not loaded) and return it."""
        ...

    def unload(self, name: str) -> bool:
        """Drop ``name``; whether it was loaded."""
        ...


@dataclass(slots=True)
class Parts:
    """The pieces of one process's backend that admin operations act on. The lists and
    the set are the backend's own: they change as workers start and admins pause."""

    db: Database
    queue: JobQueue
    degrade: DegradeController
    service: GenerationService
    catalog: ModelCatalog
    workers: Sequence[Device]
    registries: Sequence[Registry]
    paused_lanes: set[Lane]


class Operations:
    """Admin operations over one process's backend."""

    def __init__(self, parts: Parts) -> None:
        self._backend = parts

    # -- degradation -------------------------------------------------------------------

    def degrade_status(self) -> DegradeStatus:
        """The level, the pin and what the level restricts, in words."""
        degrade = self._backend.degrade
        override = degrade.override
        restrictions = degrade.restrictions
        parts = []
        if restrictions.steps_factor < 1.0:
            parts.append(f"steps cut to {restrictions.steps_factor:.0%}")
        claim = restrictions.claim_filter
        if claim.exclude_tiers:
            parts.append("tiers " + ", ".join(sorted(claim.exclude_tiers)) + " paused")
        if frozenset(LANE_ORDER) - claim.lanes:
            shut = sorted(lane.value for lane in frozenset(LANE_ORDER) - claim.lanes)
            parts.append("lanes " + ", ".join(shut) + " paused")
        return DegradeStatus(
            degrade.level,
            override.level if override is not None else None,
            degrade.auto_level,
            "; ".join(parts) or "nothing",
        )

    async def set_degrade(self, level: Level | None, actor_id: int) -> DegradeStatus:
        """Pin ``level`` (None: clear the pin); recorded by the controller."""
        degrade = self._backend.degrade
        if level is None:
            await degrade.clear_override(actor_id)
        else:
            await degrade.set_override(level, actor_id)
        await self._audit(actor_id, "degrade.clear" if level is None else "degrade.set", level)
        return self.degrade_status()

    # -- lanes -------------------------------------------------------------------------

    def paused_lanes(self) -> list[Lane]:
        """The paused lanes, in lane order."""
        return [lane for lane in LANE_ORDER if lane in self._backend.paused_lanes]

    async def pause(self, lane: Lane | None, actor_id: int) -> list[Lane]:
        """Stop starting jobs of ``lane`` (None: every lane); queued jobs stay queued."""
        self._backend.paused_lanes.update(LANE_ORDER if lane is None else (lane,))
        await self._store_pauses()
        await self._audit(actor_id, "queue.pause", lane)
        return self.paused_lanes()

    async def resume(self, lane: Lane | None, actor_id: int) -> list[Lane]:
        """Start jobs of ``lane`` again (None: every lane)."""
        self._backend.paused_lanes.difference_update(LANE_ORDER if lane is None else (lane,))
        await self._store_pauses()
        await self._audit(actor_id, "queue.resume", lane)
        return self.paused_lanes()

    async def purge(self, lane: Lane | None, actor_id: int) -> list[tuple[str, int]]:
        """Cancel every queued job of ``lane`` (None: every lane); the (job, user) pairs
        cancelled, so that each user can be told."""
        backend = self._backend
        purged = []
        for row in await backend.db.jobs.list_by_state(JobState.SUBMITTED, JobState.QUEUED):
            if lane is not None and row.lane != lane.value:
                continue
            if await backend.service.cancel(row.id):
                purged.append((row.id, row.user_id))
        await self._audit(actor_id, "queue.purge", lane, {"cancelled": len(purged)})
        return purged

    async def _store_pauses(self) -> None:
        names = [lane.value for lane in self.paused_lanes()]
        await self._backend.db.state.set(PAUSED_LANES_KEY, names)

    # -- models ------------------------------------------------------------------------

    async def load_model(self, name: str, actor_id: int) -> list[str]:
        """Load model ``name`` on every local device now; the devices that loaded it."""
        self._backend.catalog.get(name)
        registries = self._registries()
        for registry in registries:
            await asyncio.to_thread(registry.runtime, name)
        await self._audit(actor_id, "model.load", name)
        return [str(registry.device) for registry in registries]

    async def unload_model(self, name: str, actor_id: int) -> list[str]:
        """Unload model ``name`` from every local device not running it; those devices."""
        self._backend.catalog.get(name)
        freed = [str(r.device) for r in self._registries() if r.unload(name)]
        await self._audit(actor_id, "model.unload", name, {"devices": freed})
        return freed

    def loaded_models(self) -> list[str]:
        """Models loaded on this process's devices."""
        seen: dict[str, None] = {}
        for registry in self._registries(required=False):
            seen.update(dict.fromkeys(registry.loaded))
        return list(seen)

    def _registries(self, *, required: bool = True) -> list[Registry]:
        registries = list(self._backend.registries)
        if required and not registries:
            raise BadInputError("this process runs no device (models load on the workers' hosts)")
        return registries

    # -- statistics --------------------------------------------------------------------

    async def stats(self) -> ServiceStats:
        """Queue depth and p95 wait per lane, busy fraction, today's counts, the level."""
        backend = self._backend
        since_ms = _midnight_ms()
        today = await backend.db.jobs.day_summary(since_ms)
        lanes = []
        for lane in LANE_ORDER:
            waits = today.waits_ms.get(lane.value, [])
            p95 = percentile([w / 1000 for w in waits], 95) if waits else None
            queued = await backend.queue.depth(lane)
            lanes.append(LaneStats(lane, queued, p95, lane in backend.paused_lanes))
        workers = backend.workers
        busy = sum(w.busy for w in workers) / len(workers) if workers else None
        return ServiceStats(
            lanes=tuple(lanes),
            busy_fraction=busy,
            jobs_today=today.submitted,
            failed_today=today.failed,
            preemptions=sum(w.preemptions for w in workers),
            level=backend.degrade.level,
            loaded_models=tuple(self.loaded_models()),
        )

    async def _audit(
        self, actor_id: int, action: str, target: object, detail: dict[str, object] | None = None
    ) -> None:
        shown = None if target is None else str(getattr(target, "value", target))
        await record_admin_action(self._backend.db, actor_id, action, shown, dict(detail or {}))


def _midnight_ms() -> int:
    now = datetime.fromtimestamp(wall_ms() / 1000, UTC)
    return int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
