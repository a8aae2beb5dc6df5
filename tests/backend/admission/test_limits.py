"""Admission policy on every bucket store: tier, guild and global limits, the queued
cap, refusals and their messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend.admission.base import BucketStore
from backend.admission.limits import Admission
from backend.errors import BackendError, BadInputError, RefusedError
from config.settings import load_settings
from tests.fakes import FakeClock

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


# --- admission -----------------------------------------------------------------------


def admission_for(store: BucketStore, **overrides: Any) -> Admission:
    """Admission under the default settings changed by ``overrides``, on ``store``."""
    settings = load_settings(**overrides)
    return Admission(settings.scheduler.tiers, settings.admission, store)


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
