"""The level-store contract: where the admin override and each host's automatic level
live, so that every process of a deployment applies the same level."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from backend.degrade.records import HostLoad, Override, OverrideRecord

__all__ = ["LevelStore", "ttl_ms"]


@runtime_checkable
class LevelStore(Protocol):
    """The override and the processes' automatic levels, shared by everyone who reads them."""

    async def read_override(self) -> OverrideRecord | None:
        """The last override record (a pin or a clear); None if none was ever written."""
        ...

    async def write_override(self, record: OverrideRecord) -> None:
        """Replace the override record."""
        ...

    async def seed_override(self, record: Override) -> OverrideRecord:
        """Write ``record`` only if no record exists; the record stored afterwards."""
        ...

    async def undo_override(self, written: OverrideRecord, previous: OverrideRecord | None) -> bool:
        """Put ``previous`` back (None: no record) if the store still holds ``written``;
        whether it did. Undoes a write without overwriting a later one."""
        ...

    async def publish(self, host_id: str, load: HostLoad, ttl_s: float) -> None:
        """Share ``host_id``'s load until ``ttl_s`` from now (replacing its last one)."""
        ...

    async def hosts(self) -> dict[str, HostLoad]:
        """The loads of every process whose entry has not expired, by process id."""
        ...

    async def withdraw(self, host_id: str) -> None:
        """Drop ``host_id``'s entry now."""
        ...


def ttl_ms(ttl_s: float) -> int:
    """``ttl_s`` in whole milliseconds, rounded up; ValueError unless it is positive."""
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    return math.ceil(ttl_s * 1000)
