"""Delivery records, button clicks and notes: what the front end keeps across restarts."""

from __future__ import annotations

from storage.db import Database
from tests.fakes import FakeClock


async def _record(db: Database, job_id: str, **overrides: object) -> None:
    values: dict[str, object] = {
        "channel_id": 10,
        "application_id": 7,
        "interaction_token": "tok",
        "token_expires_at_ms": 900_000,
        "private": False,
    }
    values.update(overrides)
    await db.deliveries.record(job_id, 5, **values)  # type: ignore[arg-type]


async def test_a_recorded_delivery_is_pending_until_marked_delivered_once(db: Database) -> None:
    """A record stays pending until delivered; a second delivery mark changes nothing."""
    await _record(db, "a")
    await db.deliveries.set_message("a", 10, 99)
    pending = await db.deliveries.pending()
    assert [row.job_id for row in pending] == ["a"] and pending[0].message_id == 99
    assert await db.deliveries.mark_delivered("a", 99) is True
    assert await db.deliveries.mark_delivered("a", 100) is False
    row = await db.deliveries.get("a")
    assert row is not None and row.result_message_id == 99 and not await db.deliveries.pending()


async def test_recording_twice_keeps_the_first_record(db: Database) -> None:
    """A repeated record for one job (a retried command) keeps the first token."""
    await _record(db, "a", interaction_token="first")
    await _record(db, "a", interaction_token="second")
    row = await db.deliveries.get("a")
    assert row is not None and row.interaction_token == "first"


async def test_pending_deliveries_come_oldest_first_and_forget_drops_one(
    db: Database, clock: FakeClock
) -> None:
    """Pending records are ordered by creation; a forgotten one is gone."""
    await _record(db, "late")
    clock.advance(-500)
    await _record(db, "early")
    assert [row.job_id for row in await db.deliveries.pending()] == ["early", "late"]
    await db.deliveries.forget("early")
    assert [row.job_id for row in await db.deliveries.pending()] == ["late"]


async def test_a_click_claims_once_per_job_action_and_user(db: Database) -> None:
    """The first claim wins; the same click again returns its job; released, it can claim anew."""
    assert await db.clicks.claim("j", "u1", 5, "new1") == "new1"
    assert await db.clicks.claim("j", "u1", 5, "new2") == "new1"
    assert await db.clicks.claim("j", "u1", 6, "other") == "other"
    assert await db.clicks.claim("j", "v1", 5, "vary") == "vary"
    await db.clicks.release("j", "u1", 5)
    assert await db.clicks.claim("j", "u1", 5, "new3") == "new3"


async def test_notes_are_handed_out_once_in_order(db: Database) -> None:
    """Notes come oldest first, each once; other users' notes stay."""
    await db.notes.add(5, "one")
    await db.notes.add(5, "two")
    await db.notes.add(6, "theirs")
    assert [note.text for note in await db.notes.take(5)] == ["one", "two"]
    assert await db.notes.take(5) == []
    assert [note.text for note in await db.notes.take(6)] == ["theirs"]
