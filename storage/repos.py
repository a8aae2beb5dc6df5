"""Typed repositories over the schema of ``migrations/``; the only place SQL is written.

Writes run in ``Database.transaction()``, reads in ``Database.reading()``. Times are
epoch milliseconds from the database's injected clock.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from storage.errors import NotFoundError, StateConflictError

if TYPE_CHECKING:
    from storage.db import Database

JOB_STATES = ("submitted", "queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
JOB_KINDS = frozenset({"imagine", "variation", "upscale", "reroll"})
# A preempted or requeued job goes back to queued; a finished one never does.
_REQUEUEABLE_STATES = ("submitted", "queued", "running")

_USER_COLUMNS = "id, tier, banned, ban_reason, settings_json, created_at_ms"
_GUILD_COLUMNS = "id, settings_json, created_at_ms"
_JOB_COLUMNS = (
    "id, kind, parent_job_id, user_id, guild_id, channel_id, spec_json, lane, state, "
    "attempts, error, submitted_at_ms, queued_at_ms, started_at_ms, finished_at_ms, "
    "delivered_at_ms, meta_json"
)
_IMAGE_COLUMNS = "job_id, idx, path, sha256, width, height"
_AUDIT_COLUMNS = "id, at_ms, actor_id, action, target, detail_json"

Params = Sequence[Any]


@dataclass(frozen=True, slots=True)
class UserRow:
    """A Discord user as the bot knows them."""

    id: int
    tier: str
    banned: bool
    ban_reason: str | None
    settings: dict[str, Any]
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class GuildRow:
    """A Discord guild and its settings."""

    id: int
    settings: dict[str, Any]
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job's record: its spec as JSON, where it is, and when it got to each stage."""

    id: str
    kind: str
    parent_job_id: str | None
    user_id: int
    guild_id: int | None
    channel_id: int | None
    spec_json: str
    lane: str
    state: str
    attempts: int
    error: str | None
    submitted_at_ms: int
    queued_at_ms: int | None
    started_at_ms: int | None
    finished_at_ms: int | None
    delivered_at_ms: int | None
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WaitCursor:
    """Where one :meth:`JobRepo.queue_waits` pass left off; hand it to the next pass.

    ``started_after_ms`` is the latest start already reported. ``min_rowid`` is the rowid
    of the oldest job that could still start (submitted, queued or running): jobs are
    never inserted below it, so the next pass reads the table's tail from there instead
    of every job ever run.
    """

    started_after_ms: int
    min_rowid: int


@dataclass(frozen=True, slots=True)
class QueueWaits:
    """How long jobs waited in the queue, as one pass over the jobs table saw it."""

    # Waits of the attempts that started since the previous pass (start minus queued).
    started_ms: tuple[int, ...]
    # How long each job still queued has waited so far.
    waiting_ms: tuple[int, ...]
    cursor: WaitCursor


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One stored image of a job; ``idx`` -1 is the grid, 0.. the samples."""

    job_id: str
    idx: int
    path: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One admin action."""

    id: int
    at_ms: int
    actor_id: int
    action: str
    target: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """A user's measured device time in one month."""

    user_id: int
    month: str
    fast_gpu_s: float
    relax_gpu_s: float
    jobs: int


class UserRepo:
    """Users, created on first sight with the default tier."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure(self, user_id: int) -> UserRow:
        """The user's row, inserted with defaults if absent."""
        async with self._db.transaction() as conn:
            await _ensure_user(conn, user_id, self._db.now_ms())
            return await self._get(conn, user_id)

    async def get(self, user_id: int) -> UserRow | None:
        """The user's row, or None if the bot has never seen them."""
        async with self._db.reading() as conn:
            row = await _one(conn, f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(row) if row is not None else None

    async def set_tier(self, user_id: int, tier: str) -> UserRow:
        """Put the user on ``tier`` (creating them if needed)."""
        return await self._update(user_id, "tier = ?", (tier,))

    async def set_banned(self, user_id: int, banned: bool, reason: str | None = None) -> UserRow:
        """Ban or unban the user; unbanning clears the reason."""
        return await self._update(
            user_id, "banned = ?, ban_reason = ?", (int(banned), reason if banned else None)
        )

    async def update_settings(self, user_id: int, settings: dict[str, Any]) -> UserRow:
        """Replace the user's settings with ``settings``."""
        return await self._update(user_id, "settings_json = ?", (_dumps(settings),))

    async def _update(self, user_id: int, assignments: str, params: Params) -> UserRow:
        async with self._db.transaction() as conn:
            await _ensure_user(conn, user_id, self._db.now_ms())
            await _run(conn, f"UPDATE users SET {assignments} WHERE id = ?", (*params, user_id))
            return await self._get(conn, user_id)

    @staticmethod
    async def _get(conn: aiosqlite.Connection, user_id: int) -> UserRow:
        row = await _one(conn, f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise NotFoundError("user", user_id)
        return _user(row)


class GuildRepo:
    """Guilds, created on first sight with empty settings."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure(self, guild_id: int) -> GuildRow:
        """The guild's row, inserted with defaults if absent."""
        async with self._db.transaction() as conn:
            await _ensure_guild(conn, guild_id, self._db.now_ms())
            return await self._get(conn, guild_id)

    async def get(self, guild_id: int) -> GuildRow | None:
        """The guild's row, or None if the bot has never seen it."""
        async with self._db.reading() as conn:
            row = await _one(conn, f"SELECT {_GUILD_COLUMNS} FROM guilds WHERE id = ?", (guild_id,))
        return _guild(row) if row is not None else None

    async def update_settings(self, guild_id: int, settings: dict[str, Any]) -> GuildRow:
        """Replace the guild's settings with ``settings`` (creating it if needed)."""
        async with self._db.transaction() as conn:
            await _ensure_guild(conn, guild_id, self._db.now_ms())
            await _run(
                conn,
                "UPDATE guilds SET settings_json = ? WHERE id = ?",
                (_dumps(settings), guild_id),
            )
            return await self._get(conn, guild_id)

    @staticmethod
    async def _get(conn: aiosqlite.Connection, guild_id: int) -> GuildRow:
        row = await _one(conn, f"SELECT {_GUILD_COLUMNS} FROM guilds WHERE id = ?", (guild_id,))
        if row is None:
            raise NotFoundError("guild", guild_id)
        return _guild(row)


class JobRepo:
    """Jobs and their lifecycle timestamps. The queue decides; this records."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self,
        job_id: str,
        user_id: int,
        spec_json: str,
        lane: str,
        *,
        guild_id: int | None = None,
        channel_id: int | None = None,
        kind: str = "imagine",
        parent_job_id: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> JobRow:
        """Record a submitted job, creating its user (and guild) rows if needed."""
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {sorted(JOB_KINDS)}, not {kind!r}")
        async with self._db.transaction() as conn:
            now = self._db.now_ms()
            await _ensure_user(conn, user_id, now)
            if guild_id is not None:
                await _ensure_guild(conn, guild_id, now)
            await _run(
                conn,
                "INSERT INTO jobs (id, kind, parent_job_id, user_id, guild_id, channel_id,"
                " spec_json, lane, state, submitted_at_ms, meta_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'submitted', ?, ?)",
                (
                    job_id,
                    kind,
                    parent_job_id,
                    user_id,
                    guild_id,
                    channel_id,
                    spec_json,
                    lane,
                    now,
                    json.dumps(meta or {}, separators=(",", ":")),
                ),
            )
            row = await _one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        assert row is not None  # inserted above, in the same transaction
        return _job(row)

    async def mark_queued(self, job_id: str) -> None:
        """The job is (again) waiting in the queue; a finished job cannot be requeued."""
        placeholders = ", ".join("?" * len(_REQUEUEABLE_STATES))
        async with self._db.transaction() as conn:
            changed = await _run(
                conn,
                "UPDATE jobs SET state = 'queued', queued_at_ms = ?"
                f" WHERE id = ? AND state IN ({placeholders})",
                (self._db.now_ms(), job_id, *_REQUEUEABLE_STATES),
            )
            if not changed:
                row = await _one(conn, "SELECT state FROM jobs WHERE id = ?", (job_id,))
                if row is None:
                    raise NotFoundError("job", job_id)
                raise StateConflictError(job_id, row["state"], "queued")

    async def mark_started(self, job_id: str) -> None:
        """A worker began an attempt at the job."""
        await self._mark(
            job_id,
            "state = 'running', started_at_ms = ?, attempts = attempts + 1",
            (self._db.now_ms(),),
        )

    async def mark_finished(self, job_id: str, state: str, error: str | None = None) -> None:
        """The job ended in ``state`` (succeeded, failed or cancelled), with ``error`` if any."""
        if state not in FINAL_JOB_STATES:
            allowed = sorted(FINAL_JOB_STATES)
            raise ValueError(f"final state must be one of {allowed}, not {state!r}")
        await self._mark(
            job_id, "state = ?, error = ?, finished_at_ms = ?", (state, error, self._db.now_ms())
        )

    async def save_checkpoint(self, job_id: str, checkpoint: bytes | None) -> None:
        """Keep (or clear) a preempted job's saved state, so it survives the queue."""
        await self._mark(job_id, "checkpoint = ?", (checkpoint,))

    async def checkpoint(self, job_id: str) -> bytes | None:
        async with self._db.reading() as conn:
            row = await _one(conn, "SELECT checkpoint FROM jobs WHERE id = ?", (job_id,))
        return bytes(row["checkpoint"]) if row is not None and row["checkpoint"] else None

    async def set_lane(self, job_id: str, lane: str) -> None:
        await self._mark(job_id, "lane = ?", (lane,))

    async def mark_delivered(self, job_id: str) -> None:
        """The job's result reached the user."""
        await self._mark(job_id, "delivered_at_ms = ?", (self._db.now_ms(),))

    async def _mark(self, job_id: str, assignments: str, params: Params) -> None:
        async with self._db.transaction() as conn:
            changed = await _run(
                conn, f"UPDATE jobs SET {assignments} WHERE id = ?", (*params, job_id)
            )
        if not changed:
            raise NotFoundError("job", job_id)

    async def get(self, job_id: str) -> JobRow | None:
        """The job, or None if there is no such job."""
        async with self._db.reading() as conn:
            row = await _one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row is not None else None

    async def list_by_state(self, *states: str) -> list[JobRow]:
        """Jobs in any of ``states``, oldest submission first."""
        unknown = set(states) - set(JOB_STATES)
        if unknown:
            raise ValueError(f"unknown job states {sorted(unknown)}; known: {list(JOB_STATES)}")
        if not states:
            return []
        placeholders = ", ".join("?" * len(states))
        async with self._db.reading() as conn:
            rows = await _all(
                conn,
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({placeholders})"
                " ORDER BY submitted_at_ms, rowid",
                states,
            )
        return [_job(row) for row in rows]

    async def count_waiting(self, user_id: int) -> int:
        """The user's jobs submitted or queued, not yet running or finished."""
        async with self._db.reading() as conn:
            row = await _one(
                conn,
                "SELECT COUNT(*) AS n FROM jobs WHERE user_id = ?"
                " AND state IN ('submitted', 'queued')",
                (user_id,),
            )
        return int(row["n"]) if row is not None else 0

    async def list_for_user(self, user_id: int, limit: int = 20) -> list[JobRow]:
        """The user's ``limit`` most recent jobs, newest first."""
        async with self._db.reading() as conn:
            rows = await _all(
                conn,
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE user_id = ?"
                " ORDER BY submitted_at_ms DESC, rowid DESC LIMIT ?",
                (user_id, limit),
            )
        return [_job(row) for row in rows]

    async def queue_waits(self, cursor: WaitCursor | None = None) -> QueueWaits:
        """Queue waits since the pass that returned ``cursor`` (None: a first pass, which
        reports only the jobs waiting now). A requeued job's wait counts from its requeue."""
        async with self._db.reading() as conn:
            now = self._db.now_ms()
            started: tuple[int, ...] = ()
            started_after_ms = now if cursor is None else cursor.started_after_ms
            if cursor is not None:
                rows = await _all(
                    conn,
                    "SELECT started_at_ms, COALESCE(queued_at_ms, submitted_at_ms) AS queued_ms"
                    " FROM jobs WHERE rowid >= ? AND started_at_ms > ?"
                    " AND state NOT IN ('submitted', 'queued')",
                    (cursor.min_rowid, cursor.started_after_ms),
                )
                started = tuple(max(0, row["started_at_ms"] - row["queued_ms"]) for row in rows)
                started_after_ms = max([started_after_ms, *(row["started_at_ms"] for row in rows)])
            rows = await _all(
                conn,
                "SELECT COALESCE(queued_at_ms, submitted_at_ms) AS queued_ms"
                " FROM jobs WHERE state = 'queued'",
                (),
            )
            waiting = tuple(max(0, now - row["queued_ms"]) for row in rows)
            row = await _one(
                conn,
                "SELECT COALESCE("
                "(SELECT MIN(rowid) FROM jobs WHERE state IN ('submitted', 'queued', 'running')),"
                " (SELECT COALESCE(MAX(rowid), 0) + 1 FROM jobs)) AS min_rowid",
                (),
            )
        assert row is not None  # an aggregate always returns a row
        return QueueWaits(started, waiting, WaitCursor(started_after_ms, int(row["min_rowid"])))

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state present, zero if none)."""
        async with self._db.reading() as conn:
            rows = await _all(conn, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ())
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({row["state"]: int(row["n"]) for row in rows})
        return counts


class ImageRepo:
    """The images of each job; files live in the ImageStore, rows here."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self, job_id: str, idx: int, path: str, sha256: str, width: int, height: int
    ) -> ImageRow:
        """Record image ``idx`` of the job, replacing an earlier one (a retried attempt)."""
        async with self._db.transaction() as conn:
            await _run(
                conn,
                f"INSERT OR REPLACE INTO images ({_IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, idx, path, sha256, width, height),
            )
        return ImageRow(job_id, idx, path, sha256, width, height)

    async def list_for_job(self, job_id: str) -> list[ImageRow]:
        """The job's images by index: the grid (-1) first, then the samples."""
        async with self._db.reading() as conn:
            rows = await _all(
                conn,
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx",
                (job_id,),
            )
        return [_image(row) for row in rows]

    async def get(self, job_id: str, idx: int) -> ImageRow | None:
        """Image ``idx`` of the job, or None."""
        async with self._db.reading() as conn:
            row = await _one(
                conn,
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? AND idx = ?",
                (job_id, idx),
            )
        return _image(row) if row is not None else None


class BannedWordRepo:
    """Words refused in prompts; unique regardless of case."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, word: str, added_by: int | None) -> bool:
        """Ban ``word``; False if it (in any case) was already banned."""
        word = _checked_word(word)
        async with self._db.transaction() as conn:
            changed = await _run(
                conn,
                "INSERT OR IGNORE INTO banned_words (word, added_by, added_at_ms) VALUES (?, ?, ?)",
                (word, added_by, self._db.now_ms()),
            )
        return changed == 1

    async def remove(self, word: str) -> bool:
        """Unban ``word`` (any case); False if it was not banned."""
        async with self._db.transaction() as conn:
            changed = await _run(
                conn, "DELETE FROM banned_words WHERE word = ?", (_checked_word(word),)
            )
        return changed == 1

    async def list(self) -> builtins.list[str]:
        """Every banned word, sorted case-insensitively."""
        async with self._db.reading() as conn:
            rows = await _all(conn, "SELECT word FROM banned_words ORDER BY word", ())
        return [str(row["word"]) for row in rows]


class AuditRepo:
    """An append-only log of admin actions."""

    def __init__(self, db: Database) -> None:
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
            return await _insert(
                conn,
                "INSERT INTO audit_log (at_ms, actor_id, action, target, detail_json)"
                " VALUES (?, ?, ?, ?, ?)",
                (self._db.now_ms(), actor_id, action, target, _dumps(detail or {})),
            )

    async def recent(self, limit: int = 50) -> list[AuditRow]:
        """The ``limit`` latest entries, newest first."""
        async with self._db.reading() as conn:
            rows = await _all(
                conn, f"SELECT {_AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
            )
        return [_audit(row) for row in rows]


class UsageRepo:
    """Measured device seconds per user and month; fast time counts against the budget."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, user_id: int, month: str, *, fast_s: float, relax_s: float) -> None:
        async with self._db.transaction() as conn:
            await _ensure_user(conn, user_id, self._db.now_ms())
            await _run(
                conn,
                "INSERT INTO usage (user_id, month, fast_gpu_s, relax_gpu_s, jobs)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT (user_id, month) DO UPDATE SET"
                " fast_gpu_s = fast_gpu_s + excluded.fast_gpu_s,"
                " relax_gpu_s = relax_gpu_s + excluded.relax_gpu_s, jobs = jobs + 1",
                (user_id, month, fast_s, relax_s),
            )

    async def get(self, user_id: int, month: str) -> UsageRow:
        async with self._db.reading() as conn:
            row = await _one(
                conn,
                "SELECT fast_gpu_s, relax_gpu_s, jobs FROM usage WHERE user_id = ? AND month = ?",
                (user_id, month),
            )
        if row is None:
            return UsageRow(user_id, month, 0.0, 0.0, 0)
        return UsageRow(user_id, month, row["fast_gpu_s"], row["relax_gpu_s"], row["jobs"])


class StateRepo:
    """Small JSON values the service changes at run time and keeps across restarts."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> Any:
        async with self._db.reading() as conn:
            row = await _one(conn, "SELECT value_json FROM service_state WHERE key = ?", (key,))
        return json.loads(row["value_json"]) if row is not None else None

    async def set(self, key: str, value: Any) -> None:
        async with self._db.transaction() as conn:
            await _run(
                conn,
                "INSERT INTO service_state (key, value_json, updated_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value_json = excluded.value_json,"
                " updated_at_ms = excluded.updated_at_ms",
                (key, json.dumps(value, separators=(",", ":")), self._db.now_ms()),
            )

    async def delete(self, key: str) -> bool:
        async with self._db.transaction() as conn:
            return bool(await _run(conn, "DELETE FROM service_state WHERE key = ?", (key,)))


async def _ensure_user(conn: aiosqlite.Connection, user_id: int, now_ms: int) -> None:
    await _run(
        conn, "INSERT OR IGNORE INTO users (id, created_at_ms) VALUES (?, ?)", (user_id, now_ms)
    )


async def _ensure_guild(conn: aiosqlite.Connection, guild_id: int, now_ms: int) -> None:
    await _run(
        conn, "INSERT OR IGNORE INTO guilds (id, created_at_ms) VALUES (?, ?)", (guild_id, now_ms)
    )


async def _one(conn: aiosqlite.Connection, sql: str, params: Params) -> sqlite3.Row | None:
    async with conn.execute(sql, params) as cursor:
        return await cursor.fetchone()


async def _all(conn: aiosqlite.Connection, sql: str, params: Params) -> list[sqlite3.Row]:
    async with conn.execute(sql, params) as cursor:
        return list(await cursor.fetchall())


async def _run(conn: aiosqlite.Connection, sql: str, params: Params) -> int:
    """Execute a write; returns the number of rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


async def _insert(conn: aiosqlite.Connection, sql: str, params: Params) -> int:
    """Execute an INSERT; returns the new row's rowid."""
    async with conn.execute(sql, params) as cursor:
        rowid = cursor.lastrowid
    if rowid is None:
        raise RuntimeError(f"INSERT returned no rowid: {sql}")
    return rowid


def _dumps(value: dict[str, Any]) -> str:
    # Canonical form, so equal settings are equal text (diffable, comparable in SQL).
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _checked_word(word: str) -> str:
    stripped = word.strip()
    if not stripped:
        raise ValueError("a banned word cannot be empty")
    return stripped


def _user(row: sqlite3.Row) -> UserRow:
    return UserRow(
        id=row["id"],
        tier=row["tier"],
        banned=bool(row["banned"]),
        ban_reason=row["ban_reason"],
        settings=_loads(row["settings_json"]),
        created_at_ms=row["created_at_ms"],
    )


def _guild(row: sqlite3.Row) -> GuildRow:
    return GuildRow(
        id=row["id"], settings=_loads(row["settings_json"]), created_at_ms=row["created_at_ms"]
    )


def _job(row: sqlite3.Row) -> JobRow:
    values = {name: row[name] for name in _names(_JOB_COLUMNS) if name != "meta_json"}
    return JobRow(**values, meta=_loads(row["meta_json"]))


def _image(row: sqlite3.Row) -> ImageRow:
    return ImageRow(**{name: row[name] for name in _names(_IMAGE_COLUMNS)})


def _audit(row: sqlite3.Row) -> AuditRow:
    return AuditRow(
        id=row["id"],
        at_ms=row["at_ms"],
        actor_id=row["actor_id"],
        action=row["action"],
        target=row["target"],
        detail=_loads(row["detail_json"]),
    )


def _names(columns: str) -> Iterable[str]:
    return (name.strip() for name in columns.split(","))
