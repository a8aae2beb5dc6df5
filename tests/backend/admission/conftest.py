"""The bucket stores every test of this package runs against, and their clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backend.admission.base import BucketStore
from backend.admission.memory import MemoryBuckets
from backend.admission.redis import RedisBuckets
from tests.fakes import FakeClock

START_MS = 1_000_000
"""The instant every bucket test starts at, on the clock and in the pure arithmetic alike."""


def _redis_buckets(request: pytest.FixtureRequest, clock: FakeClock) -> BucketStore:
    """Buckets on the test Redis, in a namespace of this test alone."""
    client = request.getfixturevalue("redis_client")
    return RedisBuckets(client, request.getfixturevalue("redis_namespace"), now_ms=clock.ms)


StoreFactory = Callable[[pytest.FixtureRequest, FakeClock], BucketStore]

IMPLEMENTATIONS: dict[str, StoreFactory] = {
    "memory": lambda request, clock: MemoryBuckets(now_ms=clock.ms),
    "redis": _redis_buckets,
}


@pytest.fixture
def clock() -> FakeClock:
    """The buckets' wall clock, at ``START_MS`` until the test moves it."""
    return FakeClock(start_ms=START_MS)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, clock: FakeClock) -> BucketStore:
    """Each bucket store in turn, on the test's clock."""
    return IMPLEMENTATIONS[request.param](request, clock)
