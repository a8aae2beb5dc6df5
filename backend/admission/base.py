"""Token buckets: the pure arithmetic, and the contract of the stores that keep them.

A :class:`BucketStore` keeps the states and takes one token from several buckets at
once, all or nothing, so that a job refused by one limit costs nothing against the
others."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

# Tokens are floats: a caller who waits exactly the promised retry_after_s must not be
# refused because rate * elapsed rounded to 0.9999999999. A take within this of the cost
# is granted and leaves a tiny debt, so nothing is ever given away.
TOKEN_SLACK = 1e-9


# Idle buckets outlive a complete refill by this much before they are dropped; a dropped
# bucket reads as full, which is what it would be by then anyway.
EXPIRY_MARGIN_MS = 1_000


class Scope(StrEnum):
    """Which limit a bucket (or a refusal) belongs to."""

    USER = "user"
    GUILD = "guild"
    GLOBAL = "global"
    QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class BucketState:
    """What a store keeps of one bucket: its tokens as of ``updated_at_ms``."""

    tokens: float
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class Take:
    """The outcome of one take: ``state`` is the bucket after it (charged only if
    ``allowed``); ``retry_after_s`` is 0 when allowed, else the time until enough tokens."""

    allowed: bool
    state: BucketState
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``capacity`` tokens at most, refilled continuously at ``rate_per_s``."""

    rate_per_s: float
    capacity: float

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and self.capacity > 0):
            raise ValueError(f"a bucket needs a positive rate and capacity, not {self!r}")

    @classmethod
    def per_minute(cls, rate_per_min: float, burst: float | None = None) -> Bucket:
        """``rate_per_min`` jobs a minute; ``burst`` at once (default: a minute's worth,
        but at least one, or a rate under one a minute could never admit anything)."""
        capacity = burst if burst is not None else max(rate_per_min, 1.0)
        return cls(rate_per_s=rate_per_min / 60.0, capacity=capacity)

    @property
    def full_after_s(self) -> float:
        """Seconds an empty bucket takes to fill up."""
        return self.capacity / self.rate_per_s

    @property
    def expire_after_ms(self) -> int:
        """How long a store keeps an untouched bucket: after that it would be full."""
        return math.ceil(self.full_after_s * 1000) + EXPIRY_MARGIN_MS

    def take(self, stored: BucketState | None, now_ms: int, cost: float = 1.0) -> Take:
        """Take ``cost`` tokens at ``now_ms`` from a bucket last seen as ``stored`` (None: a
        bucket never used, which is full)."""
        if not 0 < cost <= self.capacity:
            raise ValueError(f"cost {cost} must be positive and at most capacity {self.capacity}")
        if stored is None:
            stored = BucketState(self.capacity, now_ms)
        # A clock that steps back (another process's, say) refills nothing and must not
        # move updated_at back either, or that interval would be refilled twice.
        elapsed_ms = max(0, now_ms - stored.updated_at_ms)
        tokens = min(self.capacity, stored.tokens + elapsed_ms * self.rate_per_s / 1000.0)
        state = BucketState(tokens, max(now_ms, stored.updated_at_ms))
        if tokens + TOKEN_SLACK >= cost:
            return Take(True, BucketState(tokens - cost, state.updated_at_ms), 0.0)
        return Take(False, state, (cost - tokens) / self.rate_per_s)


@dataclass(frozen=True, slots=True)
class Charge:
    """One bucket a take draws on: the limit it enforces, whose it is, and its shape."""

    scope: Scope
    id: str
    bucket: Bucket


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a take was refused: the charge whose bucket is short, and the wait for it."""

    charge: Charge
    retry_after_s: float


@runtime_checkable
class BucketStore(Protocol):
    """Bucket states, shared by everyone who admits jobs against the same limits."""

    async def take(self, charges: Sequence[Charge]) -> Refusal | None:
        """One token from every charge's bucket, or none at all: None when taken, else the
        refusing bucket with the longest wait (retrying sooner would be refused again)."""
        ...


def worst_refusal(refusals: Sequence[Refusal]) -> Refusal | None:
    """The refusal with the longest wait (None if there is none): retrying any sooner
    would be refused again."""
    return max(refusals, key=lambda refusal: refusal.retry_after_s, default=None)
