"""What only the in-process buckets do: forget idle buckets."""

from __future__ import annotations

from backend.admission.base import Scope
from backend.admission.memory import MemoryBuckets
from tests.backend.admission.test_buckets_contract import charge
from tests.fakes import FakeClock


async def test_memory_store_forgets_buckets_that_would_be_full(clock: FakeClock) -> None:
    """Idle buckets are swept once they would have refilled, so memory follows activity."""
    store = MemoryBuckets(now_ms=clock.ms)
    store.SWEEP_EVERY = 2
    assert await store.take([charge(Scope.USER, "1", capacity=1)]) is None
    clock.advance_s(60.0)
    assert await store.take([charge(Scope.USER, "2", capacity=1)]) is None
    assert store.bucket_count() == 1
