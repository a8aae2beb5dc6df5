"""Users, guilds and each user's measured device time per month."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from storage.errors import NotFoundError
from storage.repos.base import (
    Params,
    Session,
    dump_object,
    ensure_guild,
    ensure_user,
    execute,
    fetch_one,
    load_object,
)

_USER_COLUMNS = "id, tier, tier_set_by, banned, ban_reason, settings_json, created_at_ms"


_GUILD_COLUMNS = "id, settings_json, created_at_ms"


@dataclass(frozen=True, slots=True)
class UserRow:
    """A Discord user as the bot knows them."""

    id: int
    tier: str
    # Who assigned the tier (an admin's id, 0 for the operator); None: never assigned,
    # so the tier follows the user's roles, else the default tier.
    tier_set_by: int | None
    banned: bool
    ban_reason: str | None
    settings: dict[str, Any]
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class GuildRow:
    """A Discord guild and its settings."""

    id: int
    settings: dict[str, Any]
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A user's measured device time in one month."""

    user_id: int
    month: str
    fast_gpu_s: float
    relax_gpu_s: float
    jobs: int


@dataclass(frozen=True, slots=True)
class UsageCharge:
    """Device seconds one finished job adds to its user's month."""

    user_id: int
    month: str
    fast_s: float
    relax_s: float


async def add_usage(conn: aiosqlite.Connection, charge: UsageCharge, now_ms: int) -> None:
    """Add ``charge`` (and one job) to the user's month, inside the caller's transaction,
    so that a job's charge commits together with its result."""
    await ensure_user(conn, charge.user_id, now_ms)
    await execute(
        conn,
        "INSERT INTO usage (user_id, month, fast_gpu_s, relax_gpu_s, jobs)"
        " VALUES (?, ?, ?, ?, 1) ON CONFLICT (user_id, month) DO UPDATE SET"
        " fast_gpu_s = fast_gpu_s + excluded.fast_gpu_s,"
        " relax_gpu_s = relax_gpu_s + excluded.relax_gpu_s, jobs = jobs + 1",
        (charge.user_id, charge.month, charge.fast_s, charge.relax_s),
    )


class UserRepo:
    """Users, created on first sight with the default tier."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def ensure(self, user_id: int) -> UserRow:
        """The user's row, inserted with defaults if absent."""
        async with self._db.transaction() as conn:
            await ensure_user(conn, user_id, self._db.now_ms())
            return await self._get(conn, user_id)

    async def get(self, user_id: int) -> UserRow | None:
        """The user's row, or None if the bot has never seen them."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn, f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,)
            )
        return _user(row) if row is not None else None

    async def set_tier(self, user_id: int, tier: str, set_by: int = 0) -> UserRow:
        """Assign the user ``tier`` (creating them if needed); an assignment wins over
        the tier their roles give. ``set_by`` is the admin's id (0: the operator)."""
        return await self._update(user_id, "tier = ?, tier_set_by = ?", (tier, set_by))

    async def clear_tier(self, user_id: int, default_tier: str) -> UserRow:
        """Drop the user's tier assignment: their roles, else ``default_tier``, decide."""
        return await self._update(user_id, "tier = ?, tier_set_by = NULL", (default_tier,))

    async def set_banned(self, user_id: int, banned: bool, reason: str | None = None) -> UserRow:
        """Ban or unban the user; unbanning clears the reason."""
        return await self._update(
            user_id, "banned = ?, ban_reason = ?", (int(banned), reason if banned else None)
        )

    async def update_settings(self, user_id: int, settings: dict[str, Any]) -> UserRow:
        """Replace the user's settings with ``settings``."""
        return await self._update(user_id, "settings_json = ?", (dump_object(settings),))

    async def _update(self, user_id: int, assignments: str, params: Params) -> UserRow:
        async with self._db.transaction() as conn:
            await ensure_user(conn, user_id, self._db.now_ms())
            await execute(conn, f"UPDATE users SET {assignments} WHERE id = ?", (*params, user_id))
            return await self._get(conn, user_id)

    @staticmethod
    async def _get(conn: aiosqlite.Connection, user_id: int) -> UserRow:
        row = await fetch_one(conn, f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise NotFoundError("user", user_id)
        return _user(row)


class GuildRepo:
    """Guilds, created on first sight with empty settings."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def ensure(self, guild_id: int) -> GuildRow:
        """The guild's row, inserted with defaults if absent."""
        async with self._db.transaction() as conn:
            await ensure_guild(conn, guild_id, self._db.now_ms())
            return await self._get(conn, guild_id)

    async def get(self, guild_id: int) -> GuildRow | None:
        """The guild's row, or None if the bot has never seen it."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn, f"SELECT {_GUILD_COLUMNS} FROM guilds WHERE id = ?", (guild_id,)
            )
        return _guild(row) if row is not None else None

    async def update_settings(self, guild_id: int, settings: dict[str, Any]) -> GuildRow:
        """Replace the guild's settings with ``settings`` (creating it if needed)."""
        async with self._db.transaction() as conn:
            await ensure_guild(conn, guild_id, self._db.now_ms())
            await execute(
                conn,
                "UPDATE guilds SET settings_json = ? WHERE id = ?",
                (dump_object(settings), guild_id),
            )
            return await self._get(conn, guild_id)

    @staticmethod
    async def _get(conn: aiosqlite.Connection, guild_id: int) -> GuildRow:
        row = await fetch_one(
            conn, f"SELECT {_GUILD_COLUMNS} FROM guilds WHERE id = ?", (guild_id,)
        )
        if row is None:
            raise NotFoundError("guild", guild_id)
        return _guild(row)


class UsageRepo:
    """Measured device seconds per user and month; fast time counts against the budget."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def add(self, user_id: int, month: str, *, fast_s: float, relax_s: float) -> None:
        """Add one job's device seconds to the user's month."""
        async with self._db.transaction() as conn:
            await add_usage(conn, UsageCharge(user_id, month, fast_s, relax_s), self._db.now_ms())

    async def get(self, user_id: int, month: str) -> UsageRow:
        """The user's device time in ``month`` (zeros if none was measured)."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn,
                "SELECT fast_gpu_s, relax_gpu_s, jobs FROM usage WHERE user_id = ? AND month = ?",
                (user_id, month),
            )
        if row is None:
            return UsageRow(user_id, month, 0.0, 0.0, 0)
        return UsageRow(user_id, month, row["fast_gpu_s"], row["relax_gpu_s"], row["jobs"])


def _user(row: sqlite3.Row) -> UserRow:
    return UserRow(
        id=row["id"],
        tier=row["tier"],
        tier_set_by=row["tier_set_by"],
        banned=bool(row["banned"]),
        ban_reason=row["ban_reason"],
        settings=load_object(row["settings_json"]),
        created_at_ms=row["created_at_ms"],
    )


def _guild(row: sqlite3.Row) -> GuildRow:
    return GuildRow(
        id=row["id"], settings=load_object(row["settings_json"]), created_at_ms=row["created_at_ms"]
    )
