"""The SQLite database: one aiosqlite connection in WAL mode, migrated, with repositories."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
import structlog

from storage.errors import DatabaseFileError, DataDirError
from storage.migrate import migrate as run_migrations
from storage.repos.deliveries import ClickRepo, DeliveryRepo, NoteRepo
from storage.repos.jobs import ImageRepo, JobRepo
from storage.repos.moderation import AuditRepo, BannedWordRepo
from storage.repos.state import StateRepo
from storage.repos.users import GuildRepo, UsageRepo, UserRepo

log = structlog.get_logger(__name__)

# WAL lets other processes (bot, workers) read while one writes; NORMAL is durable
# across application crashes in WAL mode and only risks the last commits on power loss.
_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class Database:
    """One connection and the repositories over it; build it with ``Database.open``.

    All access goes through ``transaction()`` (writes) or ``reading()`` (reads), which
    hold one lock, so coroutines never interleave statements inside each other's
    transactions on the shared connection.
    """

    def __init__(
        self, connection: aiosqlite.Connection, path: Path, now_ms: Callable[[], int]
    ) -> None:
        self.connection = connection
        self.path = path
        self.now_ms = now_ms
        self._lock = asyncio.Lock()
        self.users = UserRepo(self)
        self.guilds = GuildRepo(self)
        self.jobs = JobRepo(self)
        self.images = ImageRepo(self)
        self.banned_words = BannedWordRepo(self)
        self.audit = AuditRepo(self)
        self.usage = UsageRepo(self)
        self.state = StateRepo(self)
        self.deliveries = DeliveryRepo(self)
        self.clicks = ClickRepo(self)
        self.notes = NoteRepo(self)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: Path | str,
        *,
        migrate: bool = True,
        migrations_dir: Path | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> AsyncIterator[Database]:
        """Connect (creating the file and its directory), configure, migrate; close on exit.

        Raises DataDirError when the directory cannot be created or written, and
        DatabaseFileError when the file is not a usable SQLite database, before
        anything is written.
        """
        path = Path(path)
        prepare_directory(path.parent)
        _check_openable(path)
        try:
            # isolation_level=None: sqlite3 must not open transactions behind our back;
            # transaction() and the migration runner issue BEGIN/COMMIT themselves.
            connection = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise DatabaseFileError(path, str(exc)) from exc
        try:
            connection.row_factory = aiosqlite.Row
            await _set_up(connection, path, migrations_dir, migrate=migrate)
            yield cls(connection, path, now_ms if now_ms is not None else _wall_ms)
        finally:
            await connection.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection inside ``BEGIN IMMEDIATE``: committed on success, rolled back on
        any exception or cancellation. Not re-entrant."""
        async with self._lock:
            try:
                # Inside the try: a cancelled BEGIN still runs on aiosqlite's thread, and
                # the ROLLBACK queued behind it must close that transaction.
                await self.connection.execute("BEGIN IMMEDIATE")
                yield self.connection
                await self.connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await asyncio.shield(self._rollback())
                raise

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads, held alone so they never see another coroutine's
        uncommitted writes. Not re-entrant; inside a transaction use its connection."""
        async with self._lock:
            yield self.connection

    async def _rollback(self) -> None:
        await self.connection.execute("ROLLBACK")


def prepare_directory(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be created in it by creating
    (and removing) one: permission bits do not bind root, and say nothing of a read-only
    mount. Raises DataDirError otherwise."""
    if _is_virtual(directory):
        raise DataDirError(directory, "is inside /proc or /sys, which hold no files")
    if directory.exists() and not directory.is_dir():
        raise DataDirError(directory, "is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(directory, f"cannot be created ({exc.strerror or exc})") from exc
    try:
        handle, probe = tempfile.mkstemp(prefix=".imagine-probe-", dir=directory)
    except OSError as exc:
        raise DataDirError(directory, f"is not writable ({exc.strerror or exc})") from exc
    os.close(handle)
    os.unlink(probe)


def _check_openable(path: Path) -> None:
    # A failed aiosqlite.connect leaves its thread reporting to a loop that may be gone
    # by then (a second traceback after the error); refuse what sqlite3 cannot open first.
    try:
        handle = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseFileError(path, exc.strerror or str(exc)) from exc
    os.close(handle)


def _is_virtual(directory: Path) -> bool:
    resolved = directory.resolve()
    return any(resolved.is_relative_to(root) for root in (Path("/proc"), Path("/sys")))


async def _set_up(
    connection: aiosqlite.Connection, path: Path, migrations_dir: Path | None, *, migrate: bool
) -> None:
    """Configure and migrate; an SQLite error here means the file itself is unusable."""
    try:
        await _configure(connection, path)
        if migrate:
            await run_migrations(connection, migrations_dir)
    except sqlite3.Error as exc:
        raise DatabaseFileError(path, str(exc)) from exc


async def _configure(connection: aiosqlite.Connection, path: Path) -> None:
    async with connection.execute("PRAGMA journal_mode = WAL") as cursor:
        row = await cursor.fetchone()
    mode = str(row[0]) if row is not None else "unknown"
    if mode.lower() != "wal":
        log.warning("sqlite_wal_unavailable", path=str(path), journal_mode=mode)
    for pragma in _PRAGMAS:
        await connection.execute(pragma)
