"""The level store shared by every process on one Redis (``{namespace}:degrade:``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import structlog
from redis.exceptions import RedisError

from backend.clock import wall_ms
from backend.degrade.base import ttl_ms
from backend.degrade.records import HostLoad, Override, OverrideRecord, override_from_dict
from backend.errors import BackendError

if TYPE_CHECKING:
    from redis.asyncio import Redis


log = structlog.get_logger(__name__)

T = TypeVar("T")


# KEYS: hosts hash, expiry sorted set. ARGV: host id, load JSON, now_ms, expires_at_ms,
# ttl_ms. One script, so no reader ever sees the hash without the expiry or the reverse.
PUBLISH_SCRIPT = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
for _, host in ipairs(dead) do
    redis.call('HDEL', KEYS[1], host)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""


# KEYS: hosts hash, expiry sorted set. ARGV: now_ms. Returns host, JSON, host, JSON...
HOSTS_SCRIPT = """
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
local found = {}
for _, host in ipairs(live) do
    local load = redis.call('HGET', KEYS[1], host)
    if load then
        found[#found + 1] = host
        found[#found + 1] = load
    end
end
return found
"""


# KEYS: override. ARGV: the written record's JSON, the previous one's ('' for none).
# Compare and restore in one script, so a record written meanwhile is never replaced.
UNDO_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
else
    redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""


class RedisLevelStore:
    """The store every process on one Redis shares; see the module for its keys."""

    def __init__(
        self, client: Redis, namespace: str, *, now_ms: Callable[[], int] = wall_ms
    ) -> None:
        self._client = client
        self._prefix = f"{namespace}:degrade:"
        self._now_ms = now_ms
        self._publish = client.register_script(PUBLISH_SCRIPT)
        self._hosts = client.register_script(HOSTS_SCRIPT)
        self._undo = client.register_script(UNDO_SCRIPT)

    def key(self, name: str) -> str:
        """The full Redis key of ``override``, ``hosts`` or ``expiry``."""
        return self._prefix + name

    async def read_override(self) -> OverrideRecord | None:
        """The shared override record; None if none was written or it is unreadable."""
        raw = await self._command(self._client.get(self.key("override")))
        return self._parse_override(raw)

    async def write_override(self, record: OverrideRecord) -> None:
        """Replace the shared override record (kept without expiry)."""
        await self._command(self._client.set(self.key("override"), _dumps(record.to_dict())))

    async def seed_override(self, record: Override) -> OverrideRecord:
        """Write ``record`` only if no record exists; the record stored afterwards."""
        key = self.key("override")
        await self._command(self._client.set(key, _dumps(record.to_dict()), nx=True))
        stored = self._parse_override(await self._command(self._client.get(key)))
        # Gone again between the two calls (flushed): what we meant to seed stands.
        return stored if stored is not None else record

    async def undo_override(self, written: OverrideRecord, previous: OverrideRecord | None) -> bool:
        """Put ``previous`` back if the shared record is still ``written``; whether it was."""
        args = [_dumps(written.to_dict()), _dumps(previous.to_dict()) if previous else ""]
        reply = await self._command(self._undo(keys=[self.key("override")], args=args))
        return bool(reply)

    async def publish(self, host_id: str, load: HostLoad, ttl_s: float) -> None:
        """Share ``host_id``'s load until ``ttl_s`` from now, pruning expired entries."""
        now_ms, lasts_ms = self._now_ms(), ttl_ms(ttl_s)
        keys = [self.key("hosts"), self.key("expiry")]
        args: list[str | int] = [
            host_id,
            _dumps(load.to_dict()),
            now_ms,
            now_ms + lasts_ms,
            lasts_ms,
        ]
        await self._command(self._publish(keys=keys, args=args))

    async def hosts(self) -> dict[str, HostLoad]:
        """The live processes' loads, by process id; unreadable entries are left out."""
        keys = [self.key("hosts"), self.key("expiry")]
        reply = await self._command(self._hosts(keys=keys, args=[self._now_ms()]))
        loads: dict[str, HostLoad] = {}
        for raw_host, raw_load in zip(reply[::2], reply[1::2], strict=True):
            host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
            try:
                loads[host] = HostLoad.from_dict(json.loads(raw_load))
            except ValueError:
                # One process of another version must not blind the others.
                log.warning("degrade_host_load_invalid", host=host, value=raw_load)
        return loads

    async def withdraw(self, host_id: str) -> None:
        """Drop ``host_id``'s entry now."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self.key("hosts"), host_id)
        pipe.zrem(self.key("expiry"), host_id)
        await self._command(pipe.execute())

    def _parse_override(self, raw: bytes | str | None) -> OverrideRecord | None:
        if raw is None:
            return None
        try:
            return override_from_dict(json.loads(raw))
        except ValueError:
            # Unreadable reads as never written: the next admin action replaces it.
            log.warning("degrade_override_invalid", value=raw)
            return None

    @staticmethod
    async def _command(pending: Awaitable[T]) -> T:
        try:
            return await pending
        except RedisError as exc:
            raise BackendError(f"degradation level store: Redis failed: {exc}") from exc


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
