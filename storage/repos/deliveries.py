"""What the chat front end must remember across restarts: where each job's progress
message lives and whether its result arrived, which button clicks were acted on, and
notes for users it could not reach."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from storage.repos.base import Session, execute, fetch_all, fetch_one, insert_row

_DELIVERY_COLUMNS = (
    "job_id, user_id, channel_id, message_id, application_id, interaction_token, "
    "token_expires_at_ms, private, result_message_id, created_at_ms, delivered_at_ms"
)


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A job the front end follows: its progress message and how to reach its user."""

    job_id: str
    user_id: int
    channel_id: int | None
    message_id: int | None
    application_id: int | None
    interaction_token: str | None
    token_expires_at_ms: int | None
    private: bool
    result_message_id: int | None
    created_at_ms: int
    delivered_at_ms: int | None


@dataclass(frozen=True, slots=True)
class NoteRow:
    """Something a user must be told at their next command."""

    id: int
    user_id: int
    text: str
    created_at_ms: int


class DeliveryRepo:
    """Progress messages and deliveries, one row per followed job."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def record(
        self,
        job_id: str,
        user_id: int,
        *,
        channel_id: int | None,
        application_id: int | None,
        interaction_token: str | None,
        token_expires_at_ms: int | None,
        private: bool,
    ) -> None:
        """Start following ``job_id``; a second call for the job changes nothing."""
        async with self._db.transaction() as conn:
            await execute(
                conn,
                "INSERT OR IGNORE INTO deliveries (job_id, user_id, channel_id, application_id,"
                " interaction_token, token_expires_at_ms, private, created_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    user_id,
                    channel_id,
                    application_id,
                    interaction_token,
                    token_expires_at_ms,
                    int(private),
                    self._db.now_ms(),
                ),
            )

    async def set_message(self, job_id: str, channel_id: int | None, message_id: int) -> None:
        """The job's progress message was posted (or moved) here."""
        await self._set(job_id, "channel_id = ?, message_id = ?", (channel_id, message_id))

    async def mark_delivered(self, job_id: str, result_message_id: int | None) -> bool:
        """The job's final message reached its user; False if it already had."""
        async with self._db.transaction() as conn:
            changed = await execute(
                conn,
                "UPDATE deliveries SET delivered_at_ms = ?, result_message_id = ?"
                " WHERE job_id = ? AND delivered_at_ms IS NULL",
                (self._db.now_ms(), result_message_id, job_id),
            )
        return changed > 0

    async def forget(self, job_id: str) -> None:
        """Drop the record of a job that was never submitted (it was refused)."""
        async with self._db.transaction() as conn:
            await execute(conn, "DELETE FROM deliveries WHERE job_id = ?", (job_id,))

    async def get(self, job_id: str) -> DeliveryRow | None:
        """The job's delivery record, or None if the front end never followed it."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn, f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ?", (job_id,)
            )
        return _delivery(row) if row is not None else None

    async def pending(self) -> list[DeliveryRow]:
        """Every followed job whose final message has not reached its user, oldest first."""
        async with self._db.reading() as conn:
            rows = await fetch_all(
                conn,
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivered_at_ms IS NULL"
                " ORDER BY created_at_ms",
                (),
            )
        return [_delivery(row) for row in rows]

    async def _set(self, job_id: str, assignments: str, params: tuple[object, ...]) -> None:
        async with self._db.transaction() as conn:
            await execute(
                conn, f"UPDATE deliveries SET {assignments} WHERE job_id = ?", (*params, job_id)
            )


class ClickRepo:
    """Button clicks acted on: one derived job per job, action and user."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def claim(self, job_id: str, action: str, user_id: int, derived_job_id: str) -> str:
        """Record that this click makes ``derived_job_id``; if the same click was recorded
        before, its job id instead (the caller then does nothing)."""
        async with self._db.transaction() as conn:
            await execute(
                conn,
                "INSERT OR IGNORE INTO clicks (job_id, action, user_id, derived_job_id, at_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, action, user_id, derived_job_id, self._db.now_ms()),
            )
            row = await fetch_one(
                conn,
                "SELECT derived_job_id FROM clicks WHERE job_id = ? AND action = ? AND user_id = ?",
                (job_id, action, user_id),
            )
        assert row is not None
        return str(row["derived_job_id"])

    async def release(self, job_id: str, action: str, user_id: int) -> None:
        """Forget a click whose job could not be submitted, so a later click can retry."""
        async with self._db.transaction() as conn:
            await execute(
                conn,
                "DELETE FROM clicks WHERE job_id = ? AND action = ? AND user_id = ?",
                (job_id, action, user_id),
            )


class NoteRepo:
    """Notes for users the front end could not reach, shown once."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def add(self, user_id: int, text: str) -> int:
        """Keep ``text`` for the user's next command; returns the note's id."""
        async with self._db.transaction() as conn:
            return await insert_row(
                conn,
                "INSERT INTO notes (user_id, text, created_at_ms) VALUES (?, ?, ?)",
                (user_id, text, self._db.now_ms()),
            )

    async def take(self, user_id: int) -> list[NoteRow]:
        """The user's unshown notes, oldest first, marked shown in the same transaction.
        Runs after every command, so the usual case (none) is one read, no write lock."""
        async with self._db.reading() as conn:
            waiting = await fetch_one(
                conn,
                "SELECT 1 FROM notes WHERE user_id = ? AND shown_at_ms IS NULL LIMIT 1",
                (user_id,),
            )
        if waiting is None:
            return []
        async with self._db.transaction() as conn:
            rows = await fetch_all(
                conn,
                "SELECT id, user_id, text, created_at_ms FROM notes"
                " WHERE user_id = ? AND shown_at_ms IS NULL ORDER BY id",
                (user_id,),
            )
            await execute(
                conn,
                "UPDATE notes SET shown_at_ms = ? WHERE user_id = ? AND shown_at_ms IS NULL",
                (self._db.now_ms(), user_id),
            )
        return [
            NoteRow(row["id"], row["user_id"], row["text"], row["created_at_ms"]) for row in rows
        ]


def _delivery(row: sqlite3.Row) -> DeliveryRow:
    return DeliveryRow(
        job_id=row["job_id"],
        user_id=row["user_id"],
        channel_id=row["channel_id"],
        message_id=row["message_id"],
        application_id=row["application_id"],
        interaction_token=row["interaction_token"],
        token_expires_at_ms=row["token_expires_at_ms"],
        private=bool(row["private"]),
        result_message_id=row["result_message_id"],
        created_at_ms=row["created_at_ms"],
        delivered_at_ms=row["delivered_at_ms"],
    )
