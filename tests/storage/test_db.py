"""The Database: connection set-up, pragmas, closing and transactions, on real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from storage.db import Database
from storage.errors import (
    DatabaseFileError,
    DatabaseTooNewError,
    DataDirError,
    UnusableStorageError,
)
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


async def test_open_leaves_no_probe_behind(tmp_path: Path) -> None:
    """The write probe of the data directory is removed: only the database's files remain."""
    async with Database.open(tmp_path / "imagine.db"):
        pass
    assert not [p.name for p in tmp_path.iterdir() if not p.name.startswith("imagine.db")]


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("file", "is a file, not a directory"),
        ("file/sub", "cannot be created (Not a directory)"),
        ("/proc/imagine", "is inside /proc or /sys"),
    ],
)
async def test_unusable_data_dir_is_refused(tmp_path: Path, where: str, problem: str) -> None:
    """A data directory that is a file, lies under one, or lies in /proc raises DataDirError
    naming it, and nothing is created."""
    (tmp_path / "file").write_bytes(b"")
    directory = tmp_path / where
    with pytest.raises(DataDirError) as caught:
        async with Database.open(directory / "imagine.db"):
            pass
    assert caught.value.path == directory and problem in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.parametrize("content", [b"GIF89a not a database at all" * 8, b"\x00" * 4096])
async def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    """A database file that is not SQLite raises DatabaseFileError; its bytes stay as they
    were and no journal appears beside it."""
    path = tmp_path / "imagine.db"
    path.write_bytes(content)
    with pytest.raises(DatabaseFileError, match="file is not a database"):
        async with Database.open(path):
            pass
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["imagine.db"]


async def test_directory_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    """A directory where the database file belongs raises DatabaseFileError."""
    (tmp_path / "imagine.db").mkdir()
    with pytest.raises(DatabaseFileError, match="Is a directory"):
        async with Database.open(tmp_path / "imagine.db"):
            pass


async def test_newer_database_is_an_unusable_storage_error(tmp_path: Path) -> None:
    """A database from a newer version is refused as unusable storage (status 2 at the
    command line), like the other unusable-file cases."""
    with contextlib.closing(sqlite3.connect(tmp_path / "imagine.db")) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(DatabaseTooNewError) as caught:
        async with Database.open(tmp_path / "imagine.db"):
            pass
    assert isinstance(caught.value, UnusableStorageError)


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
