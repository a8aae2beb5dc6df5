"""Jobs and their images: the lifecycle the queue drives, recorded."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from storage.errors import NotFoundError, StateConflictError
from storage.repos.base import (
    Params,
    Session,
    column_names,
    ensure_guild,
    ensure_user,
    execute,
    fetch_all,
    fetch_one,
    load_object,
)
from storage.repos.users import UsageCharge, add_usage

JOB_STATES = ("submitted", "queued", "running", "succeeded", "failed", "cancelled")


FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})


JOB_KINDS = frozenset({"imagine", "variation", "upscale", "reroll"})


# What a worker's ledger records of an attempt; each takes effect at most once.
LEDGER_ENTRIES = frozenset({"claimed", "requeued", "succeeded", "failed", "cancelled"})


# A preempted or requeued job goes back to queued; a finished one never does.
_REQUEUEABLE_STATES = ("submitted", "queued", "running")


_JOB_COLUMNS = (
    "id, kind, parent_job_id, user_id, guild_id, channel_id, spec_json, lane, state, "
    "attempts, error, submitted_at_ms, queued_at_ms, started_at_ms, finished_at_ms, "
    "delivered_at_ms, step, total_steps, meta_json"
)


_IMAGE_COLUMNS = "job_id, idx, path, sha256, width, height"


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
    # Denoising progress of the current attempt as last recorded (0 of 0: none yet).
    step: int
    total_steps: int
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
class DaySummary:
    """Jobs since a moment: how many were submitted and failed, and the queue waits (ms)
    of those that started, per lane."""

    submitted: int
    failed: int
    waits_ms: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class ImageRow:
    """One stored image of a job; ``idx`` -1 is the grid, 0.. the samples."""

    job_id: str
    idx: int
    path: str
    sha256: str
    width: int
    height: int


class JobRepo:
    """Jobs and their lifecycle timestamps. The queue decides; this records."""

    def __init__(self, db: Session) -> None:
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
            await ensure_user(conn, user_id, now)
            if guild_id is not None:
                await ensure_guild(conn, guild_id, now)
            await execute(
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
            row = await fetch_one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        assert row is not None  # inserted above, in the same transaction
        return _job(row)

    async def mark_queued(self, job_id: str) -> None:
        """The job is (again) waiting in the queue; a finished job cannot be requeued."""
        placeholders = ", ".join("?" * len(_REQUEUEABLE_STATES))
        async with self._db.transaction() as conn:
            changed = await execute(
                conn,
                "UPDATE jobs SET state = 'queued', queued_at_ms = ?"
                f" WHERE id = ? AND state IN ({placeholders})",
                (self._db.now_ms(), job_id, *_REQUEUEABLE_STATES),
            )
            if not changed:
                row = await fetch_one(conn, "SELECT state FROM jobs WHERE id = ?", (job_id,))
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

    async def cancel_waiting(self, job_id: str) -> bool:
        """Cancel the job if it is still waiting (submitted or queued); whether it was.
        A running job is left to its worker, which records how it stopped."""
        async with self._db.transaction() as conn:
            changed = await execute(
                conn,
                "UPDATE jobs SET state = 'cancelled', finished_at_ms = ?"
                " WHERE id = ? AND state IN ('submitted', 'queued')",
                (self._db.now_ms(), job_id),
            )
        return changed > 0

    async def save_checkpoint(self, job_id: str, checkpoint: bytes | None) -> None:
        """Keep (or clear) a preempted job's saved state, so it survives the queue."""
        await self._mark(job_id, "checkpoint = ?", (checkpoint,))

    async def checkpoint(self, job_id: str) -> bytes | None:
        """The saved state of a preempted job, or None."""
        async with self._db.reading() as conn:
            row = await fetch_one(conn, "SELECT checkpoint FROM jobs WHERE id = ?", (job_id,))
        return bytes(row["checkpoint"]) if row is not None and row["checkpoint"] else None

    async def mark_delivered(self, job_id: str) -> None:
        """The job's result reached the user."""
        await self._mark(job_id, "delivered_at_ms = ?", (self._db.now_ms(),))

    # -- attempts, as a worker's ledger records them -----------------------------------
    #
    # Each call below is keyed by the job, the attempt (the queue's number and the lease
    # token) and the entry, and takes effect at most once: the key is written to
    # ledger_entries in the effect's transaction. A call of an attempt other than the
    # one that last claimed the job (a stale one) is ignored, as is any call on a
    # finished job. Each returns whether it took effect.

    async def claim_attempt(self, job_id: str, attempt: int, token: str) -> bool:
        """Attempt ``attempt`` (lease ``token``) began: the job is running, one more
        attempt is counted and its progress starts again. Ignored if the job is running
        under a later attempt."""
        async with self._db.transaction() as conn:
            row = await _open_entry(conn, job_id, token, "claimed")
            if row is None or not _may_claim(row, attempt):
                return False
            now = self._db.now_ms()
            await execute(
                conn,
                "UPDATE jobs SET state = 'running', started_at_ms = ?, attempts = attempts + 1,"
                " attempt_number = ?, attempt_token = ?, step = 0, total_steps = 0 WHERE id = ?",
                (now, attempt, token, job_id),
            )
            await _record_entry(conn, job_id, attempt, token, "claimed", now)
        return True

    async def record_progress(self, job_id: str, token: str, step: int, total: int) -> bool:
        """The running attempt reached ``step`` of ``total``. Never moves backwards; a job
        that is not running under this attempt, or unknown, is left alone. One UPDATE."""
        async with self._db.transaction() as conn:
            changed = await execute(
                conn,
                "UPDATE jobs SET step = ?, total_steps = ? WHERE id = ? AND state = 'running'"
                " AND (attempt_token IS NULL OR attempt_token = ?) AND step < ?",
                (step, total, job_id, token, step),
            )
        return changed > 0

    async def requeue_attempt(
        self,
        job_id: str,
        attempt: int,
        token: str,
        checkpoint: bytes | None,
        progress: tuple[int, int] | None = None,
    ) -> bool:
        """The attempt gave the job back to the queue: it is queued again with
        ``checkpoint`` to resume from, and ``progress`` (step, total) if it is further
        than the recorded step."""
        async with self._db.transaction() as conn:
            row = await _open_entry(conn, job_id, token, "requeued")
            if row is None or not _holds(row, token):
                return False
            now = self._db.now_ms()
            step, total = progress if progress is not None else (0, 0)
            if step <= row["step"]:
                step, total = row["step"], row["total_steps"]
            await execute(
                conn,
                "UPDATE jobs SET state = 'queued', queued_at_ms = ?, checkpoint = ?,"
                " step = ?, total_steps = ? WHERE id = ?",
                (now, checkpoint, step, total, job_id),
            )
            await _record_entry(conn, job_id, attempt, token, "requeued", now)
        return True

    async def succeed_attempt(
        self,
        job_id: str,
        attempt: int,
        token: str,
        images: Sequence[ImageRow],
        charge: UsageCharge | None = None,
    ) -> bool:
        """The attempt finished the job: its images are recorded, the job succeeded, the
        device time is charged and a saved checkpoint is cleared, all in one transaction."""
        async with self._db.transaction() as conn:
            row = await _open_entry(conn, job_id, token, "succeeded")
            if row is None or not _holds(row, token):
                return False
            now = self._db.now_ms()
            for image in images:
                await _insert_image(conn, image)
            await execute(
                conn,
                "UPDATE jobs SET state = 'succeeded', error = NULL, finished_at_ms = ?,"
                " checkpoint = NULL WHERE id = ?",
                (now, job_id),
            )
            if charge is not None:
                await add_usage(conn, charge, now)
            await _record_entry(conn, job_id, attempt, token, "succeeded", now)
        return True

    async def end_attempt(
        self, job_id: str, attempt: int, token: str, state: str, error: str | None = None
    ) -> bool:
        """The attempt ended the job without a result: ``state`` is failed (with
        ``error``) or cancelled."""
        if state not in ("failed", "cancelled"):
            raise ValueError(f"an attempt ends a job failed or cancelled, not {state!r}")
        async with self._db.transaction() as conn:
            row = await _open_entry(conn, job_id, token, state)
            if row is None or not _holds(row, token):
                return False
            now = self._db.now_ms()
            await execute(
                conn,
                "UPDATE jobs SET state = ?, error = ?, finished_at_ms = ? WHERE id = ?",
                (state, error, now, job_id),
            )
            await _record_entry(conn, job_id, attempt, token, state, now)
        return True

    async def would_apply(self, job_id: str, attempt: int, token: str, entry: str) -> bool:
        """Whether call ``entry`` of the attempt would take effect now (before work that
        only that call needs, such as writing image files)."""
        async with self._db.reading() as conn:
            row = await _open_entry(conn, job_id, token, entry)
        if row is None:
            return False
        return _may_claim(row, attempt) if entry == "claimed" else _holds(row, token)

    async def runs_under(self, job_id: str, token: str) -> bool:
        """Whether the job is running under the attempt with lease ``token`` (its claim
        was recorded, and nothing ended or requeued it since)."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn,
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND attempt_token = ?",
                (job_id, token),
            )
        return row is not None

    async def applied(self, job_id: str, token: str, entry: str) -> bool:
        """Whether call ``entry`` of the attempt with lease ``token`` took effect."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn,
                "SELECT 1 FROM ledger_entries WHERE job_id = ? AND token = ? AND entry = ?",
                (job_id, token, entry),
            )
        return row is not None

    async def _mark(self, job_id: str, assignments: str, params: Params) -> None:
        async with self._db.transaction() as conn:
            changed = await execute(
                conn, f"UPDATE jobs SET {assignments} WHERE id = ?", (*params, job_id)
            )
        if not changed:
            raise NotFoundError("job", job_id)

    async def get(self, job_id: str) -> JobRow | None:
        """The job, or None if there is no such job."""
        async with self._db.reading() as conn:
            row = await fetch_one(conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
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
            rows = await fetch_all(
                conn,
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({placeholders})"
                " ORDER BY submitted_at_ms, rowid",
                states,
            )
        return [_job(row) for row in rows]

    async def count_waiting(self, user_id: int) -> int:
        """The user's jobs submitted or queued, not yet running or finished."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn,
                "SELECT COUNT(*) AS n FROM jobs WHERE user_id = ?"
                " AND state IN ('submitted', 'queued')",
                (user_id,),
            )
        return int(row["n"]) if row is not None else 0

    async def list_for_user(
        self, user_id: int, limit: int = 20, *, states: Sequence[str] = ()
    ) -> list[JobRow]:
        """The user's ``limit`` most recent jobs, newest first; only those in ``states``
        when any are given."""
        where = "user_id = ?"
        if states:
            where += f" AND state IN ({', '.join('?' * len(states))})"
        async with self._db.reading() as conn:
            rows = await fetch_all(
                conn,
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}"
                " ORDER BY submitted_at_ms DESC, rowid DESC LIMIT ?",
                (user_id, *states, limit),
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
                rows = await fetch_all(
                    conn,
                    "SELECT started_at_ms, COALESCE(queued_at_ms, submitted_at_ms) AS queued_ms"
                    " FROM jobs WHERE rowid >= ? AND started_at_ms > ?"
                    " AND state NOT IN ('submitted', 'queued')",
                    (cursor.min_rowid, cursor.started_after_ms),
                )
                started = tuple(max(0, row["started_at_ms"] - row["queued_ms"]) for row in rows)
                started_after_ms = max([started_after_ms, *(row["started_at_ms"] for row in rows)])
            rows = await fetch_all(
                conn,
                "SELECT COALESCE(queued_at_ms, submitted_at_ms) AS queued_ms"
                " FROM jobs WHERE state = 'queued'",
                (),
            )
            waiting = tuple(max(0, now - row["queued_ms"]) for row in rows)
            row = await fetch_one(
                conn,
                "SELECT COALESCE("
                "(SELECT MIN(rowid) FROM jobs WHERE state IN ('submitted', 'queued', 'running')),"
                " (SELECT COALESCE(MAX(rowid), 0) + 1 FROM jobs)) AS min_rowid",
                (),
            )
        assert row is not None  # an aggregate always returns a row
        return QueueWaits(started, waiting, WaitCursor(started_after_ms, int(row["min_rowid"])))

    async def day_summary(self, since_ms: int) -> DaySummary:
        """Counts and waits of the jobs submitted since ``since_ms``."""
        async with self._db.reading() as conn:
            rows = await fetch_all(
                conn,
                "SELECT lane, state, started_at_ms,"
                " COALESCE(queued_at_ms, submitted_at_ms) AS queued_ms"
                " FROM jobs WHERE submitted_at_ms >= ?",
                (since_ms,),
            )
        waits: dict[str, list[int]] = {}
        for row in rows:
            if row["started_at_ms"] is not None:
                wait = max(0, row["started_at_ms"] - row["queued_ms"])
                waits.setdefault(row["lane"], []).append(wait)
        failed = sum(1 for row in rows if row["state"] == "failed")
        return DaySummary(len(rows), failed, waits)

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state present, zero if none)."""
        async with self._db.reading() as conn:
            rows = await fetch_all(conn, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ())
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({row["state"]: int(row["n"]) for row in rows})
        return counts


class ImageRepo:
    """The images of each job; files live in the ImageStore, rows here."""

    def __init__(self, db: Session) -> None:
        self._db = db

    async def add(
        self, job_id: str, idx: int, path: str, sha256: str, width: int, height: int
    ) -> ImageRow:
        """Record image ``idx`` of the job, replacing an earlier one (a retried attempt)."""
        image = ImageRow(job_id, idx, path, sha256, width, height)
        async with self._db.transaction() as conn:
            await _insert_image(conn, image)
        return image

    async def list_for_job(self, job_id: str) -> list[ImageRow]:
        """The job's images by index: the grid (-1) first, then the samples."""
        async with self._db.reading() as conn:
            rows = await fetch_all(
                conn,
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx",
                (job_id,),
            )
        return [_image(row) for row in rows]

    async def get(self, job_id: str, idx: int) -> ImageRow | None:
        """Image ``idx`` of the job, or None."""
        async with self._db.reading() as conn:
            row = await fetch_one(
                conn,
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE job_id = ? AND idx = ?",
                (job_id, idx),
            )
        return _image(row) if row is not None else None


def _job(row: sqlite3.Row) -> JobRow:
    values = {name: row[name] for name in column_names(_JOB_COLUMNS) if name != "meta_json"}
    return JobRow(**values, meta=load_object(row["meta_json"]))


def _image(row: sqlite3.Row) -> ImageRow:
    return ImageRow(**{name: row[name] for name in column_names(_IMAGE_COLUMNS)})


async def _open_entry(
    conn: aiosqlite.Connection, job_id: str, token: str, entry: str
) -> sqlite3.Row | None:
    """The job's ledger columns if call ``entry`` of the attempt with lease ``token`` may
    still take effect: it has not before, and the job is not finished."""
    if entry not in LEDGER_ENTRIES:
        raise ValueError(f"ledger entry must be one of {sorted(LEDGER_ENTRIES)}, not {entry!r}")
    row = await fetch_one(
        conn,
        "SELECT state, attempt_number, attempt_token, step, total_steps FROM jobs WHERE id = ?",
        (job_id,),
    )
    if row is None:
        raise NotFoundError("job", job_id)
    if row["state"] in FINAL_JOB_STATES:
        return None
    done = await fetch_one(
        conn,
        "SELECT 1 FROM ledger_entries WHERE job_id = ? AND token = ? AND entry = ?",
        (job_id, token, entry),
    )
    return row if done is None else None


def _holds(row: sqlite3.Row, token: str) -> bool:
    """Whether the attempt with ``token`` is the one that last claimed the job (any
    attempt is, while no claim was recorded)."""
    return row["attempt_token"] is None or row["attempt_token"] == token


def _may_claim(row: sqlite3.Row, attempt: int) -> bool:
    """Whether a new claim takes the job: the queue leases a job to one attempt at a
    time, so a job running under another lease keeps it unless the claim's number is
    later (that lease was lost). A queued job's number may restart at 1 after the queue
    lost it and it was re-enqueued from here, so only a running job is compared."""
    if row["state"] != "running" or row["attempt_number"] is None:
        return True
    return attempt > int(row["attempt_number"])


async def _record_entry(
    conn: aiosqlite.Connection, job_id: str, attempt: int, token: str, entry: str, now_ms: int
) -> None:
    await execute(
        conn,
        "INSERT INTO ledger_entries (job_id, token, attempt, entry, applied_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (job_id, token, attempt, entry, now_ms),
    )


async def _insert_image(conn: aiosqlite.Connection, image: ImageRow) -> None:
    # REPLACE: an image index holds one file; a later record of it wins.
    await execute(
        conn,
        f"INSERT OR REPLACE INTO images ({_IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (image.job_id, image.idx, image.path, image.sha256, image.width, image.height),
    )
