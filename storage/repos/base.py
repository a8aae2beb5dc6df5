"""What every repository shares: the database handle it is given, and the statement
helpers."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiosqlite

Params = Sequence[Any]


class Session(Protocol):
    """What a repository needs of the database: a write transaction, a read section and
    the clock. ``storage.db.Database`` provides it; repositories never import it."""

    def now_ms(self) -> int:
        """The database's clock, epoch milliseconds."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        """The connection inside ``BEGIN IMMEDIATE``; committed on success."""
        ...

    def reading(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        """The connection for reads, held alone."""
        ...


async def ensure_user(conn: aiosqlite.Connection, user_id: int, now_ms: int) -> None:
    """Create the user row with its defaults unless it exists."""
    await execute(
        conn, "INSERT OR IGNORE INTO users (id, created_at_ms) VALUES (?, ?)", (user_id, now_ms)
    )


async def ensure_guild(conn: aiosqlite.Connection, guild_id: int, now_ms: int) -> None:
    """Create the guild row with its defaults unless it exists."""
    await execute(
        conn, "INSERT OR IGNORE INTO guilds (id, created_at_ms) VALUES (?, ?)", (guild_id, now_ms)
    )


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Params) -> sqlite3.Row | None:
    """The first row of a query, or None."""
    async with conn.execute(sql, params) as cursor:
        return await cursor.fetchone()


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Params) -> list[sqlite3.Row]:
    """Every row of a query."""
    async with conn.execute(sql, params) as cursor:
        return list(await cursor.fetchall())


async def execute(conn: aiosqlite.Connection, sql: str, params: Params) -> int:
    """Execute a write; returns the number of rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


async def insert_row(conn: aiosqlite.Connection, sql: str, params: Params) -> int:
    """Execute an INSERT; returns the new row's rowid."""
    async with conn.execute(sql, params) as cursor:
        rowid = cursor.lastrowid
    if rowid is None:
        raise RuntimeError(f"INSERT returned no rowid: {sql}")
    return rowid


def dump_object(value: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, no spaces): equal objects are equal text, so they
    diff and compare in SQL."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_object(text: str) -> dict[str, Any]:
    """Parse text that must hold a JSON object; ValueError otherwise."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def column_names(columns: str) -> Iterable[str]:
    """The names of a comma-separated column list, stripped."""
    return (name.strip() for name in columns.split(","))
