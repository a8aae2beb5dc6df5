"""The production admission control at the simulator's front door: each arriving job
passes :class:`backend.admission.limits.Admission` (the tier's queued-jobs cap, then the
user's and the global token buckets) on the simulated clock, or is refused and never
runs. A trace names no guilds, so no guild bucket applies. A refused job is not
retried: a person told to wait rarely resubmits the same job on the dot.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from backend.admission.limits import Admission
from backend.admission.memory import MemoryBuckets
from backend.errors import RefusedError
from config.settings import Settings


class SimAdmission:
    """Admission on a simulated clock: :meth:`check` at each arrival, and the count of
    each user's queued jobs kept by :meth:`queued` and :meth:`dequeued`."""

    def __init__(self, settings: Settings) -> None:
        self._now_ms = 0
        self._admission = Admission(
            settings.scheduler.tiers,
            settings.admission,
            MemoryBuckets(now_ms=lambda: self._now_ms),
        )
        self._ids: dict[str, int] = {}
        self._queued: dict[str, int] = {}

    def check(self, user: str, tier: str, now_s: float) -> str | None:
        """None when the job may enter the queue, else the refusing limit's scope
        (``"queued"``, ``"user"``, ``"global"``)."""
        self._now_ms = int(now_s * 1000)
        user_id = self._ids.setdefault(user, len(self._ids) + 1)
        admit = self._admission.admit(
            user_id=user_id, tier=tier, guild_id=None, queued_for_user=self._queued.get(user, 0)
        )
        try:
            _settle(admit)
        except RefusedError as refused:
            return refused.scope
        return None

    def queued(self, user: str) -> None:
        """One more of ``user``'s jobs waits in the queue (arrived, or given back)."""
        self._queued[user] = self._queued.get(user, 0) + 1

    def dequeued(self, user: str) -> None:
        """One of ``user``'s queued jobs started."""
        self._queued[user] -= 1


def _settle(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends to its end, without an event loop: the
    memory bucket store takes its tokens without awaiting anything."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("admission suspended; the simulator's bucket store must not await")
