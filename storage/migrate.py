"""Forward-only schema migrations: ``migrations/NNNN_name.sql``, tracked by ``user_version``.

Each pending file is applied in its own ``BEGIN IMMEDIATE`` transaction together with the
``PRAGMA user_version`` bump, so a failure leaves the database exactly at the previous
version. Migrations are never rolled back once applied; fix forward with a new file.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import aiosqlite
import structlog

from storage.errors import DatabaseTooNewError, MigrationError

log = structlog.get_logger(__name__)

FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$", re.ASCII)

# The runner owns transactions and the version; a file that touched either could commit
# half a migration or lie about what has been applied.
_LEADING_TRIVIA = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_FORBIDDEN = re.compile(
    r"(?:BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b"
    r"|PRAGMA\s+(?:\w+\s*\.\s*)?user_version\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``0001_initial.sql`` is version 1, name ``initial``."""

    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        """The file name this migration is read from (``NNNN_name.sql``)."""
        return f"{self.version:04d}_{self.name}.sql"


def discover(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: the ``migrations`` package), by version.

    Files not named ``NNNN_name.sql`` are ignored. Versions must run 1..N with no gap
    or duplicate, and no file may manage transactions or ``user_version`` itself.
    """
    root: Traversable = files("migrations") if directory is None else directory
    if not root.is_dir():
        raise MigrationError(f"migrations directory {root} does not exist")
    found: list[Migration] = []
    for entry in root.iterdir():
        match = FILE_NAME.fullmatch(entry.name)
        if match is None or not entry.is_file():
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: (m.version, m.name))
    for expected, migration in enumerate(found, start=1):
        if migration.version < expected:
            previous = found[expected - 2]
            raise MigrationError(
                f"migration {migration.filename} duplicates version {migration.version} "
                f"of {previous.filename}"
            )
        if migration.version > expected:
            raise MigrationError(
                f"migration {migration.filename} skips version {expected:04d}; "
                "versions must run 1, 2, 3... without gaps"
            )
        _check_statements(migration)
    return found


def split_statements(sql: str) -> list[str]:
    """The statements of a script; ``sqlite3.complete_statement`` knows about strings,
    comments and trigger bodies, so a ``;`` inside them does not split."""
    statements: list[str] = []
    buffer: list[str] = []
    for char in sql:
        buffer.append(char)
        if char == ";" and sqlite3.complete_statement("".join(buffer)):
            statements.append("".join(buffer).strip())
            buffer.clear()
    rest = "".join(buffer).strip()
    if rest:
        statements.append(rest)
    return [s for s in statements if _LEADING_TRIVIA.sub("", s, count=1) not in ("", ";")]


def _check_statements(migration: Migration) -> None:
    for statement in split_statements(migration.sql):
        code = _LEADING_TRIVIA.sub("", statement, count=1)
        if _FORBIDDEN.match(code):
            first_line = code.splitlines()[0]
            raise MigrationError(
                f"migration {migration.filename} contains {first_line!r}; the runner "
                "wraps each file in a transaction and sets user_version itself"
            )


async def current_version(conn: aiosqlite.Connection) -> int:
    """The schema version recorded in the database (0 for a new one)."""
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(conn: aiosqlite.Connection, directory: Path | None = None) -> int:
    """Apply every pending migration in order; returns the resulting schema version.

    The connection must be in autocommit mode (``isolation_level=None``). Raises
    DatabaseTooNewError, before touching anything, if the database is ahead of the code.
    """
    migrations = discover(directory)
    latest = len(migrations)
    version = await current_version(conn)
    if version > latest:
        raise DatabaseTooNewError(version, latest)
    for migration in migrations[version:]:
        if await _apply(conn, migration):
            log.info("migration_applied", version=migration.version, name=migration.name)
    version = await current_version(conn)
    if version > latest:  # newer code in another process migrated while we ran
        raise DatabaseTooNewError(version, latest)
    return version


async def _apply(conn: aiosqlite.Connection, migration: Migration) -> bool:
    """Run one migration atomically; False if another process applied it first."""
    # Statement by statement rather than executescript(): executescript() commits any open
    # transaction first, so the version could not be re-read under the write lock.
    try:
        await conn.execute("BEGIN IMMEDIATE")
        if await current_version(conn) >= migration.version:
            await conn.execute("COMMIT")
            return False
        for statement in split_statements(migration.sql):
            await conn.execute(statement)
        await conn.execute(f"PRAGMA user_version = {migration.version:d}")
        await conn.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise MigrationError(f"migration {migration.filename} failed: {exc}") from exc
        raise
    return True
