"""What the SQLite ledger adds to the contract: progress written at most every so often
(the step loop never waits on SQLite), and the factory's choice for each queue backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.models import JobSpec
from backend.worker.ledger import make_ledger
from backend.worker.ledger.base import Attempt
from backend.worker.ledger.sqlite import SqliteLedger
from config.settings import QueueBackend, QueueSettings
from storage.db import Database
from storage.images import ImageStore
from tests.fakes import FakeClock


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with Database.open(tmp_path / "ledger.db") as database:
        yield database


async def recorded_step(db: Database, job_id: str) -> tuple[int, int]:
    row = await db.jobs.get(job_id)
    assert row is not None
    return row.step, row.total_steps


async def test_progress_is_written_on_the_first_step_then_at_most_every_interval(
    db: Database, tmp_path: Path
) -> None:
    """The first step of an attempt is written; later ones only once the interval has
    passed; a requeue writes the latest step kept in between."""
    clock = FakeClock(start_ms=100_000)
    ledger = SqliteLedger(
        db, ImageStore(tmp_path / "img"), progress_every_s=2.0, clock=clock.monotonic
    )
    await db.jobs.insert(
        "j", 1, JobSpec(prompt="p", seed=1, width=64, height=64).to_json(), "batch"
    )
    attempt = Attempt("j", 1, "lease")
    await ledger.claimed(attempt)
    await ledger.progress(attempt, 1, 10)
    await ledger.progress(attempt, 2, 10)
    assert await recorded_step(db, "j") == (1, 10)
    clock.advance_s(2.0)
    await ledger.progress(attempt, 3, 10)
    await ledger.progress(attempt, 4, 10)
    assert await recorded_step(db, "j") == (3, 10)
    await ledger.requeued(attempt, b"cp")
    assert await recorded_step(db, "j") == (4, 10)


@pytest.mark.parametrize("backend", list(QueueBackend))
async def test_both_queue_backends_record_through_sqlite_today(
    db: Database, tmp_path: Path, backend: QueueBackend
) -> None:
    """The factory gives a SQLite ledger for either queue backend (the SQLite-owning
    process runs the embedded worker in both)."""
    ledger = make_ledger(QueueSettings(backend=backend), db, ImageStore(tmp_path / "img"))
    assert isinstance(ledger, SqliteLedger)
