"""The service-state repository (storage.repos.state), on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from storage.db import Database


async def test_service_state_round_trips_and_deletes(db: Database) -> None:
    """A state value is stored as JSON, replaced on set, and gone after delete."""
    assert await db.state.get("degrade") is None
    await db.state.set("degrade", {"level": "medium"})
    await db.state.set("degrade", {"level": "heavy"})
    assert await db.state.get("degrade") == {"level": "heavy"}
    assert await db.state.delete("degrade")
    assert await db.state.get("degrade") is None


async def test_updates_from_two_connections_lose_nothing(db: Database, tmp_path: Path) -> None:
    """Two connections to one file (as two processes sharing a data directory) each
    add to one value at the same time: every addition is kept, each read and written
    in one transaction."""
    async with Database.open(tmp_path / "data" / "imagine.db") as other:

        async def add(conn: Database, item: str) -> None:
            await conn.state.update("items", lambda items: [*(items or []), item])

        await asyncio.gather(
            *(add(db, f"a{i}") for i in range(15)), *(add(other, f"b{i}") for i in range(15))
        )
        stored = await other.state.get("items")
    assert sorted(stored) == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])
    assert await db.state.update("items", lambda items: len(items)) == 30
