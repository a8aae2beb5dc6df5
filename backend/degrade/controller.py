"""The degradation controller: the ladder, the persisted admin override and the levels
of the other hosts, combined into the level in force."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from backend.degrade.ladder import (
    DEFAULT_HISTORY_LEN,
    Ladder,
    Level,
    LoadSample,
    Restrictions,
    Transition,
    restrictions,
)
from backend.degrade.records import (
    HOST_TTL_INTERVALS,
    OVERRIDE_KEY,
    Cleared,
    HostLoad,
    Override,
    OverrideRecord,
    local_host_id,
    override_from_dict,
)
from backend.errors import BackendError

if TYPE_CHECKING:
    from backend.degrade.base import LevelStore
    from config.settings import DegradeSettings, TierSettings
    from storage.db import Database


log = structlog.get_logger(__name__)


def _highest(*levels: Level) -> Level:
    return max(levels, key=lambda level: level.rank)


Subscriber = Callable[[Transition], None]


class DegradeController:
    """The service's ladder: shared and persisted override, logged transitions, subscribers.

    The effective level is the override when one is set, else the highest of this
    process's automatic level and those the other live processes published to the
    store (:meth:`pull`); with the in-memory store there are none. ``observe`` is
    synchronous (no I/O); the override and the sharing go through the database and
    the store. ``settings`` drive the ladder; ``tiers`` say which work the harsher
    levels pause.
    """

    def __init__(
        self,
        settings: DegradeSettings,
        tiers: Mapping[str, TierSettings],
        db: Database,
        now_s: Callable[[], float],
        *,
        store: LevelStore,
        host_id: str | None = None,
        history_len: int = DEFAULT_HISTORY_LEN,
    ) -> None:
        self.settings = settings
        self.host_id = host_id if host_id is not None else local_host_id()
        # Published loads outlive a few missed samples, not a dead process.
        self.host_ttl_s = HOST_TTL_INTERVALS * settings.sample_interval_s
        self._db = db
        self._store = store
        self._now_s = now_s
        self._ladder = Ladder(settings)
        self._override: Override | None = None
        self._peer_level = Level.NORMAL
        self._history: deque[Transition] = deque(maxlen=history_len)
        self._subscribers: list[Subscriber] = []
        # Built once: the claim path asks for them on every job start.
        self._restrictions = {level: restrictions(level, settings, tiers) for level in Level}

    @property
    def level(self) -> Level:
        """The effective level: the override, else the highest automatic level."""
        if self._override is not None:
            return self._override.level
        return _highest(self._ladder.auto_level, self._peer_level)

    @property
    def auto_level(self) -> Level:
        """Where this process's own load puts the ladder, override or not."""
        return self._ladder.auto_level

    @property
    def peer_level(self) -> Level:
        """The highest automatic level the other live processes published (normal: none)."""
        return self._peer_level

    @property
    def override(self) -> Override | None:
        """The admin's pin in force; None under automatic control."""
        return self._override

    @property
    def restrictions(self) -> Restrictions:
        """What the effective level restricts (steps, which work may start)."""
        return self._restrictions[self.level]

    @property
    def history(self) -> Sequence[Transition]:
        """The last transitions, oldest first."""
        return tuple(self._history)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with every transition; returns the unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def load(self) -> None:
        """Restore the override: the shared record when the store has one, else the copy
        in this process's database, which then seeds the store. The store failing leaves
        the database's copy in force until :meth:`pull` reaches the store again."""
        local = await self._stored_override()
        shared: OverrideRecord | None
        try:
            shared = await self._store.read_override()
            if shared is None and local is not None:
                shared = await self._store.seed_override(local)
        except BackendError as exc:
            log.warning("degrade_shared_override_unavailable", error=str(exc))
            shared = local
        if shared != local:
            await self._keep_locally(shared)
        if isinstance(shared, Override):
            self._pin(shared, "degrade_override_restored")

    def observe(self, sample: LoadSample) -> Transition | None:
        """Feed one load sample; the transition it caused, already published."""
        before = self.level
        auto_before = self._ladder.auto_level
        moved = self._ladder.observe(sample, self._now_s())
        # Without an override the ladder reports every move of its own level, with the reason.
        transition = self._transition(before, moved.reason) if moved is not None else None
        if transition is None and self._ladder.auto_level is not auto_before:
            log.info(
                "degrade_auto_level_changed",
                auto_from=auto_before.value,
                auto_to=self._ladder.auto_level.value,
                effective=self.level.value,
            )
        return transition

    async def set_override(self, level: Level, actor_id: int) -> Transition | None:
        """Pin the level everywhere; if any write fails, nothing is applied anywhere
        (see :meth:`_record`) and the error propagates."""
        override = Override(level, actor_id, self._db.now_ms())
        await self._record(override)
        return self._pin(override, "degrade_override_set")

    async def clear_override(self, actor_id: int) -> Transition | None:
        """Back to automatic control everywhere, from the level the load calls for; if
        any write fails, nothing is applied anywhere and the error propagates."""
        await self._record(Cleared(actor_id, self._db.now_ms()))
        return self._unpin(actor_id, "degrade_override_cleared")

    async def _record(self, record: OverrideRecord) -> None:
        """Write ``record`` to the store, then to the database; all or nothing.

        The store goes first: an unreachable store stops the change before anything is
        written (a database copy the store lacks would be seeded to every host at the
        next start). If the store write or the database write fails, or the caller is
        cancelled in between, the store's record is put back unless another process
        replaced it meanwhile; a write that failed may still have landed, so that undo
        runs for a failed store write too.
        """
        previous = await self._store.read_override()
        try:
            await self._store.write_override(record)
            await self._keep_locally(record)
        except BaseException:
            await asyncio.shield(self._undo(record, previous))
            raise

    async def _undo(self, record: OverrideRecord, previous: OverrideRecord | None) -> None:
        try:
            undone = await self._store.undo_override(record, previous)
        except BackendError as exc:
            # The store holds the new record or the old one; the next pull of any
            # host adopts whichever it is, and the admin saw the failure.
            log.error("degrade_override_undo_failed", error=str(exc))
            return
        if undone:
            log.warning("degrade_override_undone", record=record.to_dict())

    async def pull(self) -> dict[str, HostLoad]:
        """Catch up with the store: adopt an override set or cleared by another process,
        and take the other live processes' automatic levels into account. Returns the
        live processes' loads, this one's included."""
        await self._adopt(await self._store.read_override())
        hosts = await self._store.hosts()
        others = {host: load for host, load in hosts.items() if host != self.host_id}
        self._follow_peers(others)
        return hosts

    async def push(self, sample: LoadSample, devices: int) -> None:
        """Publish this process's automatic level and load for :attr:`host_ttl_s`."""
        load = HostLoad(self._ladder.auto_level, sample, devices)
        await self._store.publish(self.host_id, load, self.host_ttl_s)

    async def withdraw(self) -> None:
        """Stop sharing this process's level (at shutdown), before its entry expires."""
        await self._store.withdraw(self.host_id)

    async def _adopt(self, shared: OverrideRecord | None) -> None:
        current = self._override
        if shared is None:
            if current is None:
                return
            # The store lost the record (Redis flushed): put ours back, unless another
            # process did first.
            shared = await self._store.seed_override(current)
        if isinstance(shared, Override) and shared != current:
            await self._keep_locally(shared)
            self._pin(shared, "degrade_override_adopted")
        elif isinstance(shared, Cleared) and current is not None:
            await self._keep_locally(shared)
            self._unpin(shared.actor_id, "degrade_override_clear_adopted")

    def _follow_peers(self, others: dict[str, HostLoad]) -> None:
        top_host, top_level = None, Level.NORMAL
        if self.settings.auto:
            for host, load in sorted(others.items()):
                if load.auto_level.rank > top_level.rank:
                    top_host, top_level = host, load.auto_level
        previous = self._peer_level
        if top_level is previous:
            return
        before = self.level
        self._peer_level = top_level
        if top_level.rank > previous.rank:
            reason = f"host {top_host} at {top_level.value}"
        else:
            reason = f"other hosts at {top_level.value} or below"
        self._transition(before, reason)

    async def _stored_override(self) -> Override | None:
        stored = await self._db.state.get(OVERRIDE_KEY)
        if stored is None:
            return None
        try:
            record = override_from_dict(stored)
        except ValueError:
            # A bad value must not keep the service from starting; the admin can set it again.
            log.warning("degrade_override_invalid", value=stored)
            return None
        return record if isinstance(record, Override) else None

    async def _keep_locally(self, record: OverrideRecord | None) -> None:
        """Mirror the shared record into the database, the fallback of the next start."""
        if isinstance(record, Override):
            await self._db.state.set(OVERRIDE_KEY, record.to_dict())
        else:
            await self._db.state.delete(OVERRIDE_KEY)

    def _pin(self, override: Override, event: str) -> Transition | None:
        before = self.level
        self._override = override
        self._ladder.set_override(override.level, self._now_s(), override.actor_id)
        log.info(event, override=override.level.value, actor_id=override.actor_id)
        return self._transition(before, f"admin override by {override.actor_id}")

    def _unpin(self, actor_id: int, event: str) -> Transition | None:
        before, had = self.level, self._override
        self._override = None
        # The ladder restarts its timers: the first automatic move after a hand-back
        # waits a full duration.
        self._ladder.clear_override(self._now_s(), actor_id)
        if had is not None:
            log.info(event, override=had.level.value, actor_id=actor_id)
        return self._transition(before, f"override cleared by {actor_id}")

    def _transition(self, before: Level, reason: str) -> Transition | None:
        """Publish the move from ``before`` to the effective level, if there was one."""
        after = self.level
        if after is before:
            return None
        transition = Transition(before, after, reason, self._now_s())
        self._history.append(transition)
        # ``from`` is a keyword, hence the mapping.
        fields = {"from": transition.from_level.value, "to": transition.to_level.value}
        log.info("degrade_level_changed", **fields, reason=transition.reason)
        for callback in list(self._subscribers):
            try:
                callback(transition)
            except Exception:
                # One broken listener must not stop the others or the caller's loop.
                log.exception("degrade_subscriber_failed", callback=repr(callback))
        return transition
