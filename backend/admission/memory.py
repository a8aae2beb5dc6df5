"""Token buckets of one process (the embedded default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backend.admission.base import BucketState, Charge, Refusal, Scope, worst_refusal
from backend.clock import wall_ms


class MemoryBuckets:
    """Buckets in this process; atomic because a take never awaits in between."""

    # Expired buckets are swept after this many takes, so memory follows active users.
    SWEEP_EVERY = 1024

    def __init__(self, *, now_ms: Callable[[], int] = wall_ms) -> None:
        self._now_ms = now_ms
        self._states: dict[tuple[Scope, str], tuple[BucketState, int]] = {}
        self._takes = 0

    async def take(self, charges: Sequence[Charge]) -> Refusal | None:
        """One token from every charge's bucket, or none; the worst refusal if refused."""
        now_ms = self._now_ms()
        self._sweep(now_ms)
        takes = []
        for charge in charges:
            stored = self._states.get((charge.scope, charge.id))
            state = stored[0] if stored is not None and stored[1] > now_ms else None
            takes.append(charge.bucket.take(state, now_ms))
        refused = [
            Refusal(charge, take.retry_after_s)
            for charge, take in zip(charges, takes, strict=True)
            if not take.allowed
        ]
        if refused:
            return worst_refusal(refused)
        for charge, take in zip(charges, takes, strict=True):
            expires_at_ms = now_ms + charge.bucket.expire_after_ms
            self._states[(charge.scope, charge.id)] = (take.state, expires_at_ms)
        return None

    def _sweep(self, now_ms: int) -> None:
        self._takes += 1
        if self._takes % self.SWEEP_EVERY:
            return
        for key in [key for key, (_, expires) in self._states.items() if expires <= now_ms]:
            del self._states[key]

    def bucket_count(self) -> int:
        """Buckets held (expired ones may linger until the next sweep)."""
        return len(self._states)
