"""Token-bucket arithmetic: grants, waits, refills, a clock that steps back, and the
bound no sequence of takes can break. Pure: no store, no loop."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.admission.base import TOKEN_SLACK, Bucket, BucketState
from tests.backend.admission.conftest import START_MS


def drain(bucket: Bucket, state: BucketState | None, now_ms: int) -> tuple[int, BucketState]:
    """Take single tokens at ``now_ms`` until refused: how many were granted, and the state."""
    granted = 0
    while (take := bucket.take(state, now_ms)).allowed:
        granted += 1
        state = take.state
    assert state is not None
    return granted, state


def test_bucket_grants_its_capacity_then_refuses_with_the_exact_wait() -> None:
    """A full bucket grants `capacity` at once; the next take waits cost/rate seconds."""
    bucket = Bucket(rate_per_s=2.0, capacity=5)
    granted, state = drain(bucket, None, START_MS)
    refused = bucket.take(state, START_MS)
    assert granted == 5
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    assert refused.state.tokens == pytest.approx(0.0)


def test_bucket_wait_shrinks_as_tokens_refill() -> None:
    """Part-way through a refill, the wait is only for the missing fraction of a token."""
    bucket = Bucket(rate_per_s=2.0, capacity=5)
    _, state = drain(bucket, None, START_MS)
    refused = bucket.take(state, START_MS + 300)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.2)


def test_bucket_refills_continuously_and_caps_at_capacity() -> None:
    """Tokens come back at rate_per_s, never beyond capacity."""
    bucket = Bucket(rate_per_s=2.0, capacity=5)
    _, empty = drain(bucket, None, START_MS)
    assert drain(bucket, empty, START_MS + 1_000)[0] == 2
    assert drain(bucket, empty, START_MS + 1_500)[0] == 3
    assert drain(bucket, empty, START_MS + 3_600_000)[0] == 5


def test_bucket_grants_after_waiting_exactly_retry_after() -> None:
    """Waiting the promised time is enough, even at a rate that is not a round number."""
    bucket = Bucket.per_minute(7)
    _, state = drain(bucket, None, START_MS)
    refused = bucket.take(state, START_MS)
    later_ms = START_MS + math.ceil(refused.retry_after_s * 1000)
    assert bucket.take(state, later_ms).allowed


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    """An earlier time refills nothing and does not rewind the bucket's own time."""
    bucket = Bucket(rate_per_s=1.0, capacity=1)
    taken = bucket.take(None, START_MS)
    back = bucket.take(taken.state, START_MS - 10_000)
    assert not back.allowed and back.state.updated_at_ms == START_MS
    assert not bucket.take(back.state, START_MS + 999).allowed
    assert bucket.take(back.state, START_MS + 1_000).allowed


def test_bucket_per_minute_defaults_burst_to_a_minute_but_at_least_one() -> None:
    """burst None means a minute's worth of tokens, and never less than one job."""
    assert Bucket.per_minute(10) == Bucket(rate_per_s=10 / 60, capacity=10)
    assert Bucket.per_minute(10, burst=3).capacity == 3
    assert Bucket.per_minute(0.5).capacity == 1


def test_bucket_rejects_a_cost_it_could_never_hold() -> None:
    """A take costing more than the capacity is a programming error, not a long wait."""
    with pytest.raises(ValueError, match="capacity"):
        Bucket(rate_per_s=1.0, capacity=2).take(None, START_MS, cost=3)


@settings(max_examples=300, deadline=None)
@given(
    rate_per_s=st.floats(min_value=0.01, max_value=1_000),
    capacity=st.floats(min_value=1, max_value=1_000),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=120_000), st.floats(0.01, 1.0)),
        min_size=1,
        max_size=40,
    ),
)
def test_bucket_never_grants_more_than_capacity_plus_refill(
    rate_per_s: float, capacity: float, steps: list[tuple[int, float]]
) -> None:
    """Over any window of any take sequence, grants stay within capacity + rate * elapsed."""
    bucket = Bucket(rate_per_s=rate_per_s, capacity=capacity)
    state: BucketState | None = None
    now_ms = START_MS
    granted: list[tuple[int, float]] = []
    for advance_ms, fraction in steps:
        now_ms += advance_ms
        cost = fraction * capacity
        take = bucket.take(state, now_ms, cost=cost)
        if take.allowed:
            granted.append((now_ms, cost))
        state = take.state
    for i, (first_ms, _) in enumerate(granted):
        total = 0.0
        for at_ms, cost in granted[i:]:
            total += cost
            bound = capacity + rate_per_s * (at_ms - first_ms) / 1000
            assert total <= bound + TOKEN_SLACK + 1e-9 * bound * len(granted)
