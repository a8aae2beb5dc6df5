"""The level store of one process (the embedded default)."""

from __future__ import annotations

from collections.abc import Callable

from backend.clock import wall_ms
from backend.degrade.base import ttl_ms
from backend.degrade.records import HostLoad, Override, OverrideRecord


class MemoryLevelStore:
    """The store of a single process; entries expire by the injected clock."""

    def __init__(self, *, now_ms: Callable[[], int] = wall_ms) -> None:
        self._now_ms = now_ms
        self._override: OverrideRecord | None = None
        self._hosts: dict[str, tuple[HostLoad, int]] = {}

    async def read_override(self) -> OverrideRecord | None:
        """The last override record written; None if none was."""
        return self._override

    async def write_override(self, record: OverrideRecord) -> None:
        """Replace the override record."""
        self._override = record

    async def seed_override(self, record: Override) -> OverrideRecord:
        """Write ``record`` only if no record exists; the record stored afterwards."""
        if self._override is None:
            self._override = record
        return self._override

    async def undo_override(self, written: OverrideRecord, previous: OverrideRecord | None) -> bool:
        """Put ``previous`` back if ``written`` is still the record; whether it was."""
        if self._override != written:
            return False
        self._override = previous
        return True

    async def publish(self, host_id: str, load: HostLoad, ttl_s: float) -> None:
        """Keep ``host_id``'s load until ``ttl_s`` from now, dropping expired entries."""
        now_ms = self._now_ms()
        self._hosts = {host: kept for host, kept in self._hosts.items() if kept[1] > now_ms}
        self._hosts[host_id] = (load, now_ms + ttl_ms(ttl_s))

    async def hosts(self) -> dict[str, HostLoad]:
        """The loads whose entries have not expired, by process id."""
        now_ms = self._now_ms()
        return {
            host: load for host, (load, expires_ms) in self._hosts.items() if expires_ms > now_ms
        }

    async def withdraw(self, host_id: str) -> None:
        """Drop ``host_id``'s entry now."""
        self._hosts.pop(host_id, None)
