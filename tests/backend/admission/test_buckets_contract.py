"""The BucketStore contract; every store runs this same suite unchanged (Redis on the
real server; the stores are listed in this package's conftest)."""

from __future__ import annotations

import asyncio

import pytest

from backend.admission.base import Bucket, BucketStore, Charge, Scope
from tests.fakes import FakeClock


def charge(scope: Scope, id_: str, capacity: float, rate_per_s: float = 1.0) -> Charge:
    """A charge on a bucket of ``capacity`` tokens refilled at ``rate_per_s``."""
    return Charge(scope, id_, Bucket(rate_per_s=rate_per_s, capacity=capacity))


async def test_store_satisfies_protocol(store: BucketStore) -> None:
    """The store is a BucketStore."""
    assert isinstance(store, BucketStore)


async def test_store_refusal_charges_no_bucket(store: BucketStore) -> None:
    """When one bucket refuses, none of the others loses a token."""
    user = charge(Scope.USER, "7", capacity=2)
    world = charge(Scope.GLOBAL, "all", capacity=1)
    assert await store.take([world]) is None
    for _ in range(5):
        refusal = await store.take([user, world])
        assert refusal is not None and refusal.charge == world
    assert [await store.take([user]) is None for _ in range(3)] == [True, True, False]


async def test_store_reports_the_refusal_with_the_longest_wait(store: BucketStore) -> None:
    """With several buckets short, the refusal names the one that frees up last."""
    quick = charge(Scope.USER, "7", capacity=1, rate_per_s=10.0)
    slow = charge(Scope.GUILD, "9", capacity=1, rate_per_s=0.1)
    assert await store.take([quick, slow]) is None
    refusal = await store.take([quick, slow])
    assert refusal is not None and refusal.charge == slow
    assert refusal.retry_after_s == pytest.approx(10.0)


async def test_store_refills_with_the_injected_clock(store: BucketStore, clock: FakeClock) -> None:
    """Time on the injected clock, not the wall, refills a bucket."""
    user = charge(Scope.USER, "7", capacity=1, rate_per_s=0.5)
    assert await store.take([user]) is None
    refusal = await store.take([user])
    assert refusal is not None and refusal.retry_after_s == pytest.approx(2.0)
    clock.advance_s(refusal.retry_after_s)
    assert await store.take([user]) is None


async def test_store_keeps_buckets_of_different_ids_apart(store: BucketStore) -> None:
    """Users (and scopes) with the same id have buckets of their own."""
    assert await store.take([charge(Scope.USER, "1", capacity=1)]) is None
    assert await store.take([charge(Scope.USER, "2", capacity=1)]) is None
    assert await store.take([charge(Scope.GUILD, "1", capacity=1)]) is None
    assert await store.take([charge(Scope.USER, "1", capacity=1)]) is not None


async def test_store_concurrent_takes_grant_exactly_the_capacity(store: BucketStore) -> None:
    """Takes racing on one bucket grant its capacity and not one token more."""
    user = charge(Scope.USER, "7", capacity=5, rate_per_s=0.001)
    results = await asyncio.gather(*(store.take([user]) for _ in range(20)))
    assert results.count(None) == 5
