"""Small JSON values the service keeps across restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from storage.repos.base import Session, execute, fetch_one

if TYPE_CHECKING:
    import aiosqlite


class StateRepo:
    """Small JSON values the service changes at run time and keeps across restarts."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def get(self, key: str) -> Any:
        """The value stored under ``key``, or None."""
        async with self._db.reading() as conn:
            return await self._read(conn, key)

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, replacing any earlier one."""
        async with self._db.transaction() as conn:
            await self._put(conn, key, value)

    async def update(self, key: str, change: Callable[[Any], Any]) -> Any:
        """Store ``change(value)`` under ``key`` (``value`` None when nothing is stored)
        in one write transaction, so that processes sharing the database do not lose
        each other's changes; returns the stored value."""
        async with self._db.transaction() as conn:
            value = change(await self._read(conn, key))
            await self._put(conn, key, value)
        return value

    @staticmethod
    async def _read(conn: aiosqlite.Connection, key: str) -> Any:
        row = await fetch_one(conn, "SELECT value_json FROM service_state WHERE key = ?", (key,))
        return json.loads(row["value_json"]) if row is not None else None

    async def _put(self, conn: aiosqlite.Connection, key: str, value: Any) -> None:
        await execute(
            conn,
            "INSERT INTO service_state (key, value_json, updated_at_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value_json = excluded.value_json,"
            " updated_at_ms = excluded.updated_at_ms",
            (key, json.dumps(value, separators=(",", ":")), self._db.now_ms()),
        )

    async def delete(self, key: str) -> bool:
        """Forget ``key``; True if it was stored."""
        async with self._db.transaction() as conn:
            return bool(await execute(conn, "DELETE FROM service_state WHERE key = ?", (key,)))
