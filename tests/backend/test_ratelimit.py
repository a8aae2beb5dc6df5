"""Admission control: the pure token bucket, both bucket stores (one contract suite),
and the admission policy on top of them."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from backend.admission import make_buckets
from backend.admission.base import TOKEN_SLACK, Bucket, BucketState, BucketStore, Charge, Scope
from backend.admission.limits import Admission
from backend.admission.memory import MemoryBuckets
from backend.admission.redis import RedisBuckets
from backend.errors import BackendError, BadInputError, RefusedError
from config.settings import Settings, load_settings

START_MS = 1_000_000


class FakeClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now

    def advance_s(self, seconds: float) -> None:
        self.now += math.ceil(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- the pure bucket -----------------------------------------------------------------


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


# --- the error -----------------------------------------------------------------------


def test_refused_error_states_the_limit_and_the_wait() -> None:
    """The message names the limit and when to retry, rounded up to a tenth of a second."""
    error = RefusedError("user", "tier free allows 10 jobs per minute", 4.16)
    assert error.message == "rate limit: tier free allows 10 jobs per minute; retry in 4.2 s"
    assert (error.scope, error.retry_after_s) == ("user", 4.16)
    assert "retry in 6.0 s" in RefusedError("user", "x", 0.1 * 3 * 20).message


def test_refused_error_for_the_queue_cap_says_to_wait_for_a_job() -> None:
    """The queued cap has no retry time: its message says to wait for a job to finish."""
    error = RefusedError("queued", "tier free allows 4 queued jobs per user", None)
    assert error.message == (
        "queue limit: tier free allows 4 queued jobs per user; retry when one of your jobs finishes"
    )


def test_refused_error_is_retryable_not_bad_input() -> None:
    """A refusal is a BackendError with its own exit status, not a BadInputError."""
    error = RefusedError("global", "x", 1.0)
    assert isinstance(error, BackendError) and not isinstance(error, BadInputError)
    assert error.exit_status == 3


# --- the store contract: memory and Redis --------------------------------------------

BACKENDS = ["memory", "redis"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, clock: FakeClock) -> BucketStore:
    if request.param == "memory":
        return MemoryBuckets(now_ms=clock)
    client = request.getfixturevalue("redis_client")
    namespace = request.getfixturevalue("redis_namespace")
    return RedisBuckets(client, namespace, now_ms=clock)


def charge(scope: Scope, id_: str, capacity: float, rate_per_s: float = 1.0) -> Charge:
    return Charge(scope, id_, Bucket(rate_per_s=rate_per_s, capacity=capacity))


async def test_store_satisfies_protocol(store: BucketStore) -> None:
    """Both stores are BucketStores."""
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


# --- admission, on both stores -------------------------------------------------------


def admission_for(store: BucketStore, **overrides: Any) -> Admission:
    return Admission(load_settings(**overrides), store)


async def admit_until_refused(
    admission: Admission,
    *,
    user_id: int = 7,
    tier: str = "free",
    guild_id: int | None = None,
    limit: int = 10_000,
) -> tuple[int, RefusedError]:
    """Admit jobs at one instant until refused: how many got in, and the refusal."""
    for admitted in range(limit):
        try:
            await admission.admit(user_id=user_id, tier=tier, guild_id=guild_id, queued_for_user=0)
        except RefusedError as error:
            return admitted, error
    raise AssertionError(f"{limit} jobs admitted without a refusal")


async def test_free_tier_gets_ten_a_minute_then_waits_six_seconds(store: BucketStore) -> None:
    """The free tier admits 10 at once, then refuses for 60/10 s with its limit stated."""
    admitted, error = await admit_until_refused(admission_for(store))
    assert admitted == 10
    assert error.scope == "user" and error.retry_after_s == pytest.approx(6.0)
    assert error.message == "rate limit: tier free allows 10 jobs per minute; retry in 6.0 s"


@pytest.mark.parametrize("tier", ["basic", "pro"])
async def test_paid_tiers_get_a_hundred_a_minute(store: BucketStore, tier: str) -> None:
    """Paid tiers admit 100 at once, then one every 0.6 s."""
    admitted, error = await admit_until_refused(admission_for(store), tier=tier)
    assert admitted == 100
    assert error.scope == "user" and error.retry_after_s == pytest.approx(0.6)


async def test_retrying_after_the_refusal_wait_is_admitted(
    store: BucketStore, clock: FakeClock
) -> None:
    """After waiting retry_after_s one more job gets in, and only one."""
    admission = admission_for(store)
    _, error = await admit_until_refused(admission)
    assert error.retry_after_s is not None
    clock.advance_s(error.retry_after_s)
    admitted, _ = await admit_until_refused(admission)
    assert admitted == 1


async def test_a_configured_burst_sizes_the_user_bucket(store: BucketStore) -> None:
    """A tier's burst, not its rate, sets how many jobs get in at once."""
    tiers = {"free": {"burst": 3}}
    admitted, error = await admit_until_refused(admission_for(store, scheduler={"tiers": tiers}))
    assert admitted == 3 and "in bursts of up to 3" in error.limit


async def test_guild_bucket_refuses_with_guild_scope(store: BucketStore) -> None:
    """A guild's limit counts all its members and refuses only jobs from that guild."""
    admission = admission_for(store, admission={"guild_per_min": 3})
    for user_id in (1, 2, 3):
        await admission.admit(user_id=user_id, tier="free", guild_id=9, queued_for_user=0)
    with pytest.raises(RefusedError) as refused:
        await admission.admit(user_id=4, tier="free", guild_id=9, queued_for_user=0)
    assert refused.value.scope == "guild" and refused.value.retry_after_s == pytest.approx(20.0)
    assert "this server allows 3 jobs per minute" in refused.value.message
    await admission.admit(user_id=4, tier="free", guild_id=10, queued_for_user=0)
    await admission.admit(user_id=4, tier="free", guild_id=None, queued_for_user=0)


async def test_global_bucket_refuses_with_global_scope(store: BucketStore) -> None:
    """The service-wide limit counts every user and refuses with scope global."""
    admission = admission_for(store, admission={"global_per_min": 5})
    for user_id in range(5):
        await admission.admit(user_id=user_id, tier="free", guild_id=None, queued_for_user=0)
    with pytest.raises(RefusedError) as refused:
        await admission.admit(user_id=99, tier="pro", guild_id=1, queued_for_user=0)
    assert refused.value.scope == "global" and refused.value.retry_after_s == pytest.approx(12.0)
    assert "the service allows 5 jobs per minute" in refused.value.message


async def test_global_refusal_does_not_charge_the_user(
    store: BucketStore, clock: FakeClock
) -> None:
    """Jobs refused by the global bucket cost nothing against the user's own bucket."""
    tight = admission_for(store, admission={"global_per_min": 3})
    for user_id in range(3):
        await tight.admit(user_id=user_id, tier="free", guild_id=None, queued_for_user=0)
    for _ in range(20):
        with pytest.raises(RefusedError, match="the service"):
            await tight.admit(user_id=42, tier="free", guild_id=None, queued_for_user=0)
    # Same buckets, a roomy global limit: one second refills it but not user 42's bucket.
    clock.advance_s(1.0)
    roomy = admission_for(store, admission={"global_per_min": 3000})
    admitted, error = await admit_until_refused(roomy, user_id=42)
    assert admitted == 10 and error.scope == "user"


async def test_queued_cap_refuses_without_a_retry_time_or_a_token(store: BucketStore) -> None:
    """At max_queued the user is refused with no retry time, and no token is taken."""
    admission = admission_for(store)
    for _ in range(5):
        with pytest.raises(RefusedError) as refused:
            await admission.admit(user_id=7, tier="free", guild_id=None, queued_for_user=4)
        assert refused.value.scope == "queued" and refused.value.retry_after_s is None
    await admission.admit(user_id=7, tier="free", guild_id=None, queued_for_user=3)
    admitted, _ = await admit_until_refused(admission)
    assert admitted == 9


async def test_unknown_tier_is_bad_input_naming_the_known_ones(store: BucketStore) -> None:
    """An undeclared tier is bad input whose message lists the declared tiers."""
    with pytest.raises(BadInputError, match=r"unknown tier 'gold'; known tiers: admin, basic"):
        await admission_for(store).admit(user_id=7, tier="gold", guild_id=None, queued_for_user=0)


async def test_concurrent_admits_let_in_exactly_the_burst(store: BucketStore) -> None:
    """50 simultaneous submissions by one free user admit exactly 10."""
    admission = admission_for(store)
    results = await asyncio.gather(
        *(
            admission.admit(user_id=7, tier="free", guild_id=3, queued_for_user=0)
            for _ in range(50)
        ),
        return_exceptions=True,
    )
    refusals = [result for result in results if isinstance(result, RefusedError)]
    assert results.count(None) == 10 and len(refusals) == 40
    assert {refusal.scope for refusal in refusals} == {"user"}


# --- Redis specifics -----------------------------------------------------------------


async def test_redis_keys_carry_a_ttl_of_a_full_refill(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """Each bucket key expires once it would have refilled, plus a margin."""
    store = RedisBuckets(redis_client, redis_namespace, now_ms=clock)
    await admission_for(store).admit(user_id=7, tier="free", guild_id=9, queued_for_user=0)
    keys = sorted([key.decode() async for key in redis_client.scan_iter(f"{redis_namespace}:*")])
    assert keys == [
        f"{redis_namespace}:rl:{scope}" for scope in ("global:all", "guild:9", "user:7")
    ]
    ttls_ms = [await redis_client.pttl(key) for key in keys]
    assert all(60_000 < ttl_ms <= 61_000 for ttl_ms in ttls_ms), ttls_ms


async def test_redis_refusal_writes_nothing(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """A refused take creates no key for the buckets it did not charge."""
    store = RedisBuckets(redis_client, redis_namespace, now_ms=clock)
    world = charge(Scope.GLOBAL, "all", capacity=1)
    assert await store.take([world]) is None
    assert await store.take([charge(Scope.USER, "7", capacity=5), world]) is not None
    assert not await redis_client.exists(f"{redis_namespace}:rl:user:7")


async def test_redis_buckets_are_shared_between_stores(
    redis_client: Redis, redis_namespace: str, clock: FakeClock
) -> None:
    """Two processes' stores on one Redis and namespace enforce one limit together."""
    first = admission_for(RedisBuckets(redis_client, redis_namespace, now_ms=clock))
    second = admission_for(RedisBuckets(redis_client, redis_namespace, now_ms=clock))
    for _ in range(4):
        await first.admit(user_id=7, tier="free", guild_id=None, queued_for_user=0)
    admitted, _ = await admit_until_refused(second)
    assert admitted == 6


async def test_redis_failure_is_a_backend_error(clock: FakeClock) -> None:
    """An unreachable Redis surfaces as a BackendError from the limiter."""
    client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        with pytest.raises(BackendError, match="rate limiter: Redis failed"):
            await RedisBuckets(client, "nowhere", now_ms=clock).take(
                [charge(Scope.USER, "7", capacity=1)]
            )
    finally:
        await client.aclose()


# --- memory specifics and the factory ------------------------------------------------


async def test_memory_store_forgets_buckets_that_would_be_full(clock: FakeClock) -> None:
    """Idle buckets are swept once they would have refilled, so memory follows activity."""
    store = MemoryBuckets(now_ms=clock)
    store.SWEEP_EVERY = 2
    assert await store.take([charge(Scope.USER, "1", capacity=1)]) is None
    clock.advance_s(60.0)
    assert await store.take([charge(Scope.USER, "2", capacity=1)]) is None
    assert store.bucket_count() == 1


async def test_make_buckets_follows_the_queue_backend(redis_client: Redis) -> None:
    """Memory by default; Redis buckets in the queue's namespace when the queue is Redis."""
    assert isinstance(make_buckets(Settings().queue), MemoryBuckets)
    on_redis = load_settings(queue={"backend": "redis", "namespace": "shop"})
    store = make_buckets(on_redis.queue, redis_client)
    assert isinstance(store, RedisBuckets)
    assert store.key(charge(Scope.USER, "7", capacity=1)) == "shop:rl:user:7"
    with pytest.raises(BackendError, match="no Redis client"):
        make_buckets(on_redis.queue)
