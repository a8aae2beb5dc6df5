"""The service-state repository (storage.repos.state), on a real SQLite file."""

from __future__ import annotations

from storage.db import Database


async def test_service_state_round_trips_and_deletes(db: Database) -> None:
    """A state value is stored as JSON, replaced on set, and gone after delete."""
    assert await db.state.get("degrade") is None
    await db.state.set("degrade", {"level": "medium"})
    await db.state.set("degrade", {"level": "heavy"})
    assert await db.state.get("degrade") == {"level": "heavy"}
    assert await db.state.delete("degrade")
    assert await db.state.get("degrade") is None
