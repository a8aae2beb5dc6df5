"""Errors of the storage layer; each carries its data and builds its own message."""

from __future__ import annotations


class StorageError(Exception):
    """Root of every error the storage layer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MigrationError(StorageError):
    """A migration file is malformed, or applying it failed (nothing of it was kept)."""


class DatabaseTooNewError(MigrationError):
    """The database was migrated by newer code; running older code on it is refused."""

    def __init__(self, db_version: int, code_version: int) -> None:
        self.db_version = db_version
        self.code_version = code_version
        super().__init__(
            f"database schema version {db_version} is newer than this code supports "
            f"({code_version}); upgrade imagine-bot or use a matching database"
        )


class NotFoundError(StorageError):
    """A row that an update or lookup requires does not exist."""

    def __init__(self, kind: str, key: object) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key} not found")


class StateConflictError(StorageError):
    """A job exists but its state forbids the requested transition."""

    def __init__(self, job_id: str, state: str, wanted: str) -> None:
        self.job_id = job_id
        self.state = state
        self.wanted = wanted
        super().__init__(f"job {job_id} is {state}; it cannot become {wanted}")
