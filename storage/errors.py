"""Errors of the storage layer; each carries its data and builds its own message."""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Root of every error the storage layer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnusableStorageError(StorageError):
    """The data directory or the database file cannot be used as found: the operator
    must fix the environment (the command line exits with status 2 and one line)."""


class DataDirError(UnusableStorageError):
    """The data directory cannot be created, or nothing can be written in it."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"data directory {path} {problem}; set data_dir (IMAGINE_DATA_DIR) to a "
            "writable directory"
        )


class DatabaseFileError(UnusableStorageError):
    """The database file exists but cannot be opened as an SQLite database."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"database {path} cannot be used ({problem}); move it aside or point data_dir "
            "(IMAGINE_DATA_DIR) at another directory"
        )


class MigrationError(StorageError):
    """A migration file is malformed, or applying it failed (nothing of it was kept)."""


class DatabaseTooNewError(MigrationError, UnusableStorageError):
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


class DataDirInUseError(StorageError):
    """Another live process holds the data directory's lock in a way that excludes this
    one. ``holder`` describes it (pid, command, since when) if it recorded itself;
    ``shared`` is whether this process asked to share (the Redis queue)."""

    def __init__(self, path: Path, holder: str | None, shared: bool) -> None:
        self.path = path
        self.holder = holder
        self.shared = shared
        who = holder or "another process"
        if shared:
            advice = (
                "it runs the memory queue, which cannot be shared; stop it, or run it with "
                'the Redis queue too (queue.backend = "redis")'
            )
        else:
            advice = (
                "to run several processes on one data directory, use the Redis queue "
                '(queue.backend = "redis")'
            )
        super().__init__(f"data directory {path} is in use by {who}; {advice}")
