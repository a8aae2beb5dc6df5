"""Admission control: token buckets per user, per guild and for the whole service.

The bucket arithmetic is a pure function of the stored state and the time. A
:class:`BucketStore` keeps the states and takes one token from several buckets at once,
all or nothing, so that a job refused by one limit costs nothing against the others.
:class:`Admission` turns the settings into buckets and refusals into :class:`RefusedError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from redis.exceptions import RedisError

from backend.clock import wall_ms
from backend.errors import BackendError, BadInputError, RefusedError
from config.settings import QueueBackend, Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Admission",
    "Bucket",
    "BucketState",
    "BucketStore",
    "Charge",
    "MemoryBuckets",
    "RedisBuckets",
    "Refusal",
    "Scope",
    "Take",
    "make_buckets",
]

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


def _worst(refusals: list[Refusal]) -> Refusal | None:
    return max(refusals, key=lambda refusal: refusal.retry_after_s, default=None)


class MemoryBuckets:
    """Buckets in this process; atomic because a take never awaits in between."""

    # Expired buckets are swept after this many takes, so memory follows active users.
    SWEEP_EVERY = 1024

    def __init__(self, *, now_ms: Callable[[], int] = wall_ms) -> None:
        self._now_ms = now_ms
        self._states: dict[tuple[Scope, str], tuple[BucketState, int]] = {}
        self._takes = 0

    async def take(self, charges: Sequence[Charge]) -> Refusal | None:
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
            return _worst(refused)
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


# KEYS: the buckets. ARGV: now_ms, cost, TOKEN_SLACK, then rate_per_s, capacity, expire_ms
# per key.
# The arithmetic mirrors Bucket.take step for step; numbers are stored with %.17g
# because Lua's default tostring keeps 14 digits. All keys are checked before any is
# written, and a script runs alone on the server, which makes the take all or nothing.
TAKE_SCRIPT = """
local now_ms = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local slack = tonumber(ARGV[3])
local tokens = {}
local stamps = {}
local worst = 0
local worst_wait = -1
for i, key in ipairs(KEYS) do
    local rate = tonumber(ARGV[4 + (i - 1) * 3])
    local capacity = tonumber(ARGV[5 + (i - 1) * 3])
    local stored = redis.call('HMGET', key, 'tokens', 'updated_at_ms')
    local have = tonumber(stored[1]) or capacity
    local updated = tonumber(stored[2]) or now_ms
    local elapsed = math.max(0, now_ms - updated)
    have = math.min(capacity, have + elapsed * rate / 1000.0)
    tokens[i] = have
    stamps[i] = math.max(now_ms, updated)
    if have + slack < cost then
        local wait = (cost - have) / rate
        if wait > worst_wait then
            worst = i
            worst_wait = wait
        end
    end
end
if worst > 0 then
    return {worst, string.format('%.17g', worst_wait)}
end
for i, key in ipairs(KEYS) do
    local expire_ms = tonumber(ARGV[6 + (i - 1) * 3])
    redis.call('HSET', key, 'tokens', string.format('%.17g', tokens[i] - cost),
        'updated_at_ms', string.format('%d', stamps[i]))
    redis.call('PEXPIRE', key, expire_ms)
end
return false
"""


class RedisBuckets:
    """Buckets in Redis, shared by every process admitting jobs; one script per take.

    Keys are ``{namespace}:rl:{scope}:{id}`` hashes that expire once they would be full.
    The time comes from ``now_ms`` (not the server's clock) so tests can drive it.
    """

    def __init__(
        self, client: Redis, namespace: str, *, now_ms: Callable[[], int] = wall_ms
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._now_ms = now_ms
        self._script = client.register_script(TAKE_SCRIPT)

    def key(self, charge: Charge) -> str:
        """The Redis key of a charge's bucket."""
        return f"{self._namespace}:rl:{charge.scope.value}:{charge.id}"

    async def take(self, charges: Sequence[Charge]) -> Refusal | None:
        args: list[str | int] = [self._now_ms(), "1", repr(TOKEN_SLACK)]
        for charge in charges:
            bucket = charge.bucket
            args += [repr(bucket.rate_per_s), repr(bucket.capacity), bucket.expire_after_ms]
        keys = [self.key(charge) for charge in charges]
        try:
            reply = await self._script(keys=keys, args=args)
        except RedisError as exc:
            raise BackendError(f"rate limiter: Redis failed: {exc}") from exc
        if reply is None:
            return None
        index, retry_after = reply
        return Refusal(charges[int(index) - 1], float(retry_after))


@dataclass(frozen=True, slots=True)
class _Limit:
    """A bucket as admission uses it, with the words that explain it to a refused user."""

    bucket: Bucket
    text: str


def _describe_rate(who: str, rate_per_min: float, burst: int | None) -> str:
    text = f"{who} allows {rate_per_min:g} jobs per minute"
    if burst is not None and burst != rate_per_min:
        text += f" in bursts of up to {burst}"
    return text


class Admission:
    """Decides whether a new job may enter the queue; raises :class:`RefusedError` if not.

    Checked in order: the user's queued jobs against the tier's cap (which takes no
    token), then one token each from the user's, the guild's and the global bucket,
    all or nothing.
    """

    def __init__(self, settings: Settings, store: BucketStore) -> None:
        self._store = store
        self._tiers = settings.scheduler.tiers
        self._users = {
            name: _Limit(
                Bucket.per_minute(tier.rate_per_min, tier.burst),
                _describe_rate(f"tier {name}", tier.rate_per_min, tier.burst),
            )
            for name, tier in self._tiers.items()
        }
        admission = settings.admission
        self._guild = _Limit(
            Bucket.per_minute(admission.guild_per_min),
            _describe_rate("this server", admission.guild_per_min, None),
        )
        self._global = _Limit(
            Bucket.per_minute(admission.global_per_min),
            _describe_rate("the service", admission.global_per_min, None),
        )

    async def admit(
        self, *, user_id: int, tier: str, guild_id: int | None, queued_for_user: int
    ) -> None:
        """Let one job of ``user_id`` in, or raise :class:`RefusedError` saying why and
        when to retry; an unknown ``tier`` is a :class:`BadInputError`."""
        settings = self._tiers.get(tier)
        if settings is None:
            known = ", ".join(sorted(self._tiers))
            raise BadInputError(f"unknown tier {tier!r}; known tiers: {known}")
        if queued_for_user >= settings.max_queued:
            limit = f"tier {tier} allows {settings.max_queued} queued jobs per user"
            raise RefusedError(Scope.QUEUED.value, limit, None)
        limits = {Charge(Scope.USER, str(user_id), self._users[tier].bucket): self._users[tier]}
        if guild_id is not None:
            limits[Charge(Scope.GUILD, str(guild_id), self._guild.bucket)] = self._guild
        limits[Charge(Scope.GLOBAL, "all", self._global.bucket)] = self._global
        refusal = await self._store.take(list(limits))
        if refusal is not None:
            charge = refusal.charge
            raise RefusedError(charge.scope.value, limits[charge].text, refusal.retry_after_s)


def make_buckets(settings: Settings, redis_client: Redis | None = None) -> BucketStore:
    """The bucket store for ``settings.queue.backend``: Redis buckets are shared by every
    process on that Redis, memory ones only within this process."""

    def redis_buckets() -> BucketStore:
        if redis_client is None:
            raise BackendError("queue.backend is 'redis' but make_buckets got no Redis client")
        return RedisBuckets(redis_client, settings.queue.namespace)

    factories: dict[QueueBackend, Callable[[], BucketStore]] = {
        QueueBackend.MEMORY: MemoryBuckets,
        QueueBackend.REDIS: redis_buckets,
    }
    return factories[settings.queue.backend]()
