"""The banned-word and audit repositories (storage.repos.moderation), on a real SQLite file."""

from __future__ import annotations

from storage.db import Database
from tests.fakes import FakeClock

# Banned words


async def test_banned_words_are_unique_regardless_of_case(db: Database) -> None:
    """A word banned in one case cannot be added again in another, and removes in any case."""
    assert await db.banned_words.add("Dragon", added_by=1) is True
    assert await db.banned_words.add("dragon", added_by=2) is False
    assert await db.banned_words.add("  DRAGON ", added_by=2) is False
    assert await db.banned_words.list() == ["Dragon"]
    assert await db.banned_words.remove("DRAGON") is True
    assert await db.banned_words.remove("dragon") is False
    assert await db.banned_words.list() == []


async def test_banned_words_are_sorted_case_insensitively(db: Database) -> None:
    """list() sorts without regard to case."""
    for word in ("cherry", "Banana", "apple"):
        await db.banned_words.add(word, added_by=None)
    assert await db.banned_words.list() == ["apple", "Banana", "cherry"]


# Audit log


async def test_audit_log_is_newest_first(db: Database, clock: FakeClock) -> None:
    """recent() returns entries newest first (by insertion, even within one millisecond)."""
    first = await db.audit.record(1, "ban", "user:7", {"reason": "spam"})
    second = await db.audit.record(1, "unban", "user:7")
    third = await db.audit.record(2, "tier", None, {"tier": "pro"})
    assert first < second < third
    entries = await db.audit.recent()
    assert [e.id for e in entries] == [third, second, first]
    assert [e.action for e in await db.audit.recent(limit=2)] == ["tier", "unban"]
    oldest = entries[-1]
    assert (oldest.actor_id, oldest.target, oldest.detail) == (1, "user:7", {"reason": "spam"})
    assert oldest.at_ms == clock.now_ms
    assert entries[1].detail == {}
