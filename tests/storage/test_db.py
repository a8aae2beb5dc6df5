"""The Database: connection set-up, pragmas, closing and transactions, on real SQLite files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage.db import Database
from storage.migrate import current_version, discover


async def pragma(db: Database, name: str) -> object:
    async with db.connection.execute(f"PRAGMA {name}") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return row[0]


# Connection set-up


async def test_open_creates_directory_and_migrates(tmp_path: Path) -> None:
    """Opening a path in a missing directory creates both and migrates to the latest version."""
    path = tmp_path / "a" / "b" / "imagine.db"
    async with Database.open(str(path)) as db:
        assert db.path == path
        assert await current_version(db.connection) == len(discover())
    assert path.is_file()


async def test_open_without_migrate_leaves_schema_alone(tmp_path: Path) -> None:
    """migrate=False opens the database at whatever version it is."""
    async with Database.open(tmp_path / "x.db", migrate=False) as db:
        assert await current_version(db.connection) == 0


async def test_wal_foreign_keys_and_busy_timeout_are_on(db: Database) -> None:
    """The connection runs in WAL mode with foreign keys enforced and a busy timeout."""
    assert await pragma(db, "journal_mode") == "wal"
    assert await pragma(db, "foreign_keys") == 1
    assert await pragma(db, "busy_timeout") == 5000
    assert await pragma(db, "synchronous") == 1  # NORMAL


async def test_connection_is_closed_on_exit(tmp_path: Path) -> None:
    """Leaving the context closes the connection."""
    async with Database.open(tmp_path / "x.db") as db:
        pass
    with pytest.raises(ValueError, match="no active connection"):
        await db.connection.execute("SELECT 1")


# Transactions


async def test_transaction_rolls_back_on_error(db: Database) -> None:
    """An exception inside transaction() undoes every statement of it."""

    async def failing_write() -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO users (id, created_at_ms) VALUES (1, 0)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_write()
    assert await db.users.get(1) is None
    assert not db.connection.in_transaction


async def test_cancelled_transaction_rolls_back_and_frees_the_connection(db: Database) -> None:
    """A transaction cancelled midway keeps nothing and the next write goes through."""
    inside = asyncio.Event()

    async def slow_write() -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO users (id, created_at_ms) VALUES (1, 0)")
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(slow_write())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.users.get(1) is None
    assert (await db.users.ensure(2)).id == 2
