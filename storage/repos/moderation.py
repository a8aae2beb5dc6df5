"""Moderation and audit: banned words and the log of admin actions."""

from __future__ import annotations

import builtins
import sqlite3
from dataclasses import dataclass
from typing import Any

from storage.repos.base import Session, dump_object, execute, fetch_all, insert_row, load_object

_AUDIT_COLUMNS = "id, at_ms, actor_id, action, target, detail_json"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One admin action."""

    id: int
    at_ms: int
    actor_id: int
    action: str
    target: str | None
    detail: dict[str, Any]


class BannedWordRepo:
    """Words refused in prompts; unique regardless of case."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def add(self, word: str, added_by: int | None) -> bool:
        """Ban ``word``; False if it (in any case) was already banned."""
        word = _checked_word(word)
        async with self._db.transaction() as conn:
            changed = await execute(
                conn,
                "INSERT OR IGNORE INTO banned_words (word, added_by, added_at_ms) VALUES (?, ?, ?)",
                (word, added_by, self._db.now_ms()),
            )
        return changed == 1

    async def remove(self, word: str) -> bool:
        """Unban ``word`` (any case); False if it was not banned."""
        async with self._db.transaction() as conn:
            changed = await execute(
                conn, "DELETE FROM banned_words WHERE word = ?", (_checked_word(word),)
            )
        return changed == 1

    async def list(self) -> builtins.list[str]:
        """Every banned word, sorted case-insensitively."""
        async with self._db.reading() as conn:
            rows = await fetch_all(conn, "SELECT word FROM banned_words ORDER BY word", ())
        return [str(row["word"]) for row in rows]


class AuditRepo:
    """An append-only log of admin actions."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def record(
        self,
        actor_id: int,
        action: str,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append an entry; returns its id."""
        async with self._db.transaction() as conn:
            return await insert_row(
                conn,
                "INSERT INTO audit_log (at_ms, actor_id, action, target, detail_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (self._db.now_ms(), actor_id, action, target, dump_object(detail or {})),
            )

    async def recent(self, limit: int = 50) -> list[AuditRow]:
        """The ``limit`` latest entries, newest first."""
        async with self._db.reading() as conn:
            rows = await fetch_all(
                conn, f"SELECT {_AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
            )
        return [_audit(row) for row in rows]


def _checked_word(word: str) -> str:
    stripped = word.strip()
    if not stripped:
        raise ValueError("a banned word cannot be empty")
    return stripped


def _audit(row: sqlite3.Row) -> AuditRow:
    return AuditRow(
        id=row["id"],
        at_ms=row["at_ms"],
        actor_id=row["actor_id"],
        action=row["action"],
        target=row["target"],
        detail=load_object(row["detail_json"]),
    )
