"""The lock on a data directory: which processes may use it at once.

A process that runs the in-memory queue owns its data directory alone: another one would
take its running jobs for orphans and run them again. It holds an exclusive lock on
``<data_dir>/imagine.lock``; processes that share their queue in Redis hold shared locks
side by side, so neither kind starts beside the other. The lock is ``flock(2)`` on an
open file: the kernel drops it when the process dies, ``kill -9`` included, so the next
start finds it free and reconciles the dead one's jobs. The file records the holder (pid,
command, start time) for the refusal message; the last holder to leave removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from storage.db import prepare_directory
from storage.errors import DataDirError, DataDirInUseError

LOCK_NAME = "imagine.lock"

# Another process may remove the file between our open and our lock (it was the last
# holder, leaving); each retry opens the file that replaced it.
_OPEN_ATTEMPTS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """A process holding the lock, as it recorded itself."""

    pid: int
    command: str
    since_ms: int
    shared: bool

    def to_json(self) -> bytes:
        """The record written into the lock file."""
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Holder | None:
        """The record read back; None if it is empty or half-written."""
        try:
            raw = json.loads(data)
            pid, since_ms = int(raw["pid"]), int(raw["since_ms"])
            return cls(pid, str(raw["command"]), since_ms, bool(raw["shared"]))
        except (ValueError, KeyError, TypeError):
            return None


@contextlib.contextmanager
def hold_data_dir(data_dir: Path, *, command: str, shared: bool = False) -> Iterator[Holder]:
    """Hold the data directory's lock until the block ends: exclusively, or ``shared``
    with other sharing holders. Creates the directory if needed. Never waits: raises
    DataDirInUseError naming the holder if another process holds it the other way (or
    exclusively), and DataDirError if the directory or the lock file cannot be used."""
    prepare_directory(data_dir)
    path = data_dir / LOCK_NAME
    me = Holder(os.getpid(), command, int(time.time() * 1000), shared)
    handle = _acquire(path, me)
    try:
        record = me.to_json()
        os.pwrite(handle, record, 0)
        os.ftruncate(handle, len(record))
        yield me
    finally:
        _release(handle, path)


def _acquire(path: Path, me: Holder) -> int:
    for _ in range(_OPEN_ATTEMPTS):
        handle = _open(path)
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if me.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.from_json(_read(handle))
            os.close(handle)
            raise DataDirInUseError(path.parent, _describe(holder), me.shared) from None
        except OSError as exc:  # ENOLCK: a file system without locks
            os.close(handle)
            raise DataDirError(path.parent, f"cannot be locked ({exc.strerror or exc})") from exc
        if _is_current(handle, path):
            return handle
        os.close(handle)
    raise DataDirInUseError(path.parent, None, me.shared)


def _open(path: Path) -> int:
    try:
        # Not inherited by programs this process starts: the lock dies with the process.
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        problem = f"has a lock file {LOCK_NAME} that cannot be opened ({exc.strerror or exc})"
        raise DataDirError(path.parent, problem) from exc


def _read(handle: int) -> bytes:
    try:
        return os.pread(handle, 4096, 0)
    except OSError:
        return b""


def _is_current(handle: int, path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (not one its last holder removed)."""
    try:
        here, there = os.fstat(handle), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _release(handle: int, path: Path) -> None:
    """Remove the file if no other process holds it, then let go."""
    try:
        # Only an exclusive holder may remove it: a shared one first checks it is the
        # last (the conversion never waits; failing it means others hold the file).
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_current(handle, path):
            path.unlink()
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOENT):
            raise
    finally:
        os.close(handle)


def _describe(holder: Holder | None) -> str | None:
    if holder is None:
        return None
    started = time.localtime(holder.since_ms / 1000)
    today = time.localtime()[:3] == started[:3]
    since = time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", started)
    return f"pid {holder.pid} ({holder.command}, since {since})"
