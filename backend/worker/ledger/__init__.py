"""The job ledger a device worker records through (the contract in ``base``) and its
factory.

Both queue backends map to :class:`~backend.worker.ledger.sqlite.SqliteLedger` today:
with the memory queue the worker runs in the process that owns SQLite, and in Redis mode
the embedded worker does too. A Redis-backed ledger, for workers on other hosts whose
records the SQLite-owning process applies, is the next implementation of the contract.

The factory imports an implementation only when it builds one, so that importing the
contract never loads storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from config.settings import QueueBackend, QueueSettings

if TYPE_CHECKING:
    from backend.worker.ledger.base import JobLedger
    from storage.db import Database
    from storage.images import ImageStore


def _sqlite(db: Database, images: ImageStore) -> JobLedger:
    from backend.worker.ledger.sqlite import SqliteLedger

    return SqliteLedger(db, images)


_FACTORIES: dict[QueueBackend, Callable[[Database, ImageStore], JobLedger]] = {
    QueueBackend.MEMORY: _sqlite,
    QueueBackend.REDIS: _sqlite,
}


def make_ledger(queue: QueueSettings, db: Database, images: ImageStore) -> JobLedger:
    """The ledger for ``queue.backend``: for both backends, today, SQLite and the image
    store of this process (see the module's docstring)."""
    return _FACTORIES[queue.backend](db, images)
