"""The clock and the migrated database that the Database and repository tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.db import Database
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """The database's wall clock, at 1 000 ms until the test moves it."""
    return FakeClock(start_ms=1_000)


@pytest.fixture
async def db(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Database]:
    """A freshly migrated database in a file of this test alone, stamping times from ``clock``."""
    async with Database.open(tmp_path / "data" / "imagine.db", now_ms=clock.ms) as database:
        yield database
