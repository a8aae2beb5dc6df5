"""Token buckets shared by every process on one Redis, taken atomically by a Lua script."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from backend.admission.base import TOKEN_SLACK, Charge, Refusal
from backend.clock import wall_ms
from backend.errors import BackendError

if TYPE_CHECKING:
    from redis.asyncio import Redis


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
        """One token from every charge's bucket or none, in one script run."""
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
