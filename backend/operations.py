"""Admin operations on the running service, for a front end: the degradation level,
pausing and purging lanes, models on this process's devices, and statistics.

Every change is written to the audit log with who did it. Pauses are kept in SQLite,
so they survive a restart, and every process sharing the data directory follows them:
a pause applies at once to the process it was made in, and to the others at their next
load-watcher pass (``degrade.sample_interval_s``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

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

log = structlog.get_logger(__name__)


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


def _lanes_of(stored: Any) -> set[Lane]:
    """The lanes a stored value names (anything else, or an unknown name, is dropped)."""
    names = stored if isinstance(stored, list) else []
    return {Lane(name) for name in names if name in {lane.value for lane in Lane}}


def _in_order(lanes: set[Lane]) -> list[Lane]:
    """``lanes`` in lane order."""
    return [lane for lane in LANE_ORDER if lane in lanes]


def _names(lanes: set[Lane]) -> list[str]:
    return [lane.value for lane in _in_order(lanes)]


class LanePauses:
    """The lanes an admin paused: nothing of them starts, and their queued jobs stay
    queued.

    :attr:`lanes` is this process's view, read on every claim. The database holds the
    deployment's: a change is applied to it in one write transaction (no process loses
    another's), then adopted here; :meth:`refresh` adopts a change another process made.
    One lock orders the two, so a refresh never undoes a change made here meanwhile.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.lanes: set[Lane] = set()

    async def refresh(self) -> None:
        """Adopt the stored pauses (logged when they differ from this process's)."""
        async with self._lock:
            stored = _lanes_of(await self._db.state.get(PAUSED_LANES_KEY))
            if stored != self.lanes:
                log.info("lane_pauses_adopted", paused=_names(stored))
                self._adopt(stored)

    async def change(self, lanes: Iterable[Lane], *, paused: bool) -> None:
        """Pause ``lanes`` (or, with ``paused`` False, resume them) everywhere."""
        moved = set(lanes)

        def apply(stored: Any) -> list[str]:
            now = _lanes_of(stored)
            return _names(now | moved if paused else now - moved)

        async with self._lock:
            self._adopt(_lanes_of(await self._db.state.update(PAUSED_LANES_KEY, apply)))

    def _adopt(self, lanes: set[Lane]) -> None:
        # In place: the claim filter and the admin operations hold this very set.
        self.lanes.intersection_update(lanes)
        self.lanes.update(lanes)


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
    pauses: LanePauses


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
        return _in_order(self._backend.pauses.lanes)

    async def pause(self, lane: Lane | None, actor_id: int) -> list[Lane]:
        """Stop starting jobs of ``lane`` (None: every lane) on every process; queued
        jobs stay queued."""
        await self._backend.pauses.change(LANE_ORDER if lane is None else (lane,), paused=True)
        await self._audit(actor_id, "queue.pause", lane)
        return self.paused_lanes()

    async def resume(self, lane: Lane | None, actor_id: int) -> list[Lane]:
        """Start jobs of ``lane`` again (None: every lane) on every process."""
        await self._backend.pauses.change(LANE_ORDER if lane is None else (lane,), paused=False)
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
            lanes.append(LaneStats(lane, queued, p95, lane in backend.pauses.lanes))
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
