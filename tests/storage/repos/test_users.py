"""The user, guild and usage repositories (storage.repos.users), on a real SQLite file."""

from __future__ import annotations

from storage.db import Database
from tests.fakes import FakeClock

# Users and guilds


async def test_user_is_created_with_defaults(db: Database, clock: FakeClock) -> None:
    """ensure() creates an unbanned free-tier user with empty settings, once."""
    assert await db.users.get(42) is None
    user = await db.users.ensure(42)
    assert (user.tier, user.banned, user.ban_reason, user.settings) == ("free", False, None, {})
    assert user.created_at_ms == clock.now_ms
    clock.advance(10)
    assert await db.users.ensure(42) == user


async def test_user_tier_ban_and_settings(db: Database) -> None:
    """Tier, ban (with reason, cleared on unban) and settings are stored and read back."""
    await db.users.set_tier(7, "pro")  # creates the user on the way
    banned = await db.users.set_banned(7, True, "spam")
    assert (banned.tier, banned.banned, banned.ban_reason) == ("pro", True, "spam")
    unbanned = await db.users.set_banned(7, False, "ignored")
    assert (unbanned.banned, unbanned.ban_reason) == (False, None)
    await db.users.update_settings(7, {"stylize": 250, "ar": "16:9"})
    user = await db.users.get(7)
    assert user is not None
    assert user.settings == {"ar": "16:9", "stylize": 250}
    assert user.tier == "pro"


async def test_guild_settings(db: Database) -> None:
    """Guilds are created on demand and their settings replaced as a whole."""
    assert await db.guilds.get(5) is None
    assert (await db.guilds.ensure(5)).settings == {}
    await db.guilds.update_settings(5, {"nsfw": False})
    await db.guilds.update_settings(5, {"channel": 9})
    guild = await db.guilds.get(5)
    assert guild is not None
    assert guild.settings == {"channel": 9}


# Usage


async def test_usage_accumulates_per_user_and_month(db: Database) -> None:
    """Usage adds up per (user, month) and starts at zero."""
    assert (await db.usage.get(1, "2026-11")).fast_gpu_s == 0.0
    await db.usage.add(1, "2026-11", fast_s=2.5, relax_s=0.0)
    await db.usage.add(1, "2026-11", fast_s=1.0, relax_s=4.0)
    await db.usage.add(1, "2026-12", fast_s=9.0, relax_s=0.0)
    row = await db.usage.get(1, "2026-11")
    assert (row.fast_gpu_s, row.relax_gpu_s, row.jobs) == (3.5, 4.0, 2)
