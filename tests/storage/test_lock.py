"""The data directory's lock: one memory-queue process alone, Redis-queue processes
together, never the two kinds at once; the lock dies with its process."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import storage.lock
from storage.errors import DataDirError, DataDirInUseError
from storage.lock import LOCK_NAME, Holder, hold_data_dir

# A process that takes the lock, says so, and keeps it until it is killed.
HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from storage.lock import hold_data_dir
    with hold_data_dir(Path(sys.argv[1]), command="imagine generate"):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture
def holder_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``tmp_path/data`` exclusively; killed at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        yield process
    finally:
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_a_second_holder_is_refused_naming_the_first(
    tmp_path: Path, holder_process: subprocess.Popen[str]
) -> None:
    """While a live process holds the directory, taking it again fails at once with a
    message naming that process's pid and command and pointing at the Redis queue."""
    with pytest.raises(DataDirInUseError) as refused, hold_data_dir(tmp_path / "data", command="x"):
        pytest.fail("the lock was taken twice")
    message = str(refused.value)
    assert f"pid {holder_process.pid} (imagine generate, since " in message
    assert str(tmp_path / "data") in message and 'queue.backend = "redis"' in message
    assert "\n" not in message


def test_the_lock_dies_with_its_process(
    tmp_path: Path, holder_process: subprocess.Popen[str]
) -> None:
    """A holder killed with SIGKILL leaves the directory free for the next process."""
    holder_process.send_signal(signal.SIGKILL)
    holder_process.wait(10)
    with hold_data_dir(tmp_path / "data", command="next") as me:
        assert me.pid == os.getpid()


def test_the_holder_is_recorded_in_the_lock_file(tmp_path: Path) -> None:
    """The lock file names this process while it holds the directory."""
    with hold_data_dir(tmp_path, command="imagine bot") as me:
        recorded = Holder.from_json((tmp_path / LOCK_NAME).read_bytes())
    assert recorded == me and me.command == "imagine bot" and not me.shared


def test_the_last_holder_removes_the_file(tmp_path: Path) -> None:
    """Leaving, the last holder removes the lock file; a sharing holder that is not the
    last leaves it to the others."""
    with hold_data_dir(tmp_path, command="a"):
        pass
    assert not (tmp_path / LOCK_NAME).exists()
    with hold_data_dir(tmp_path, command="a", shared=True):
        with hold_data_dir(tmp_path, command="b", shared=True):
            pass
        assert (tmp_path / LOCK_NAME).exists()
        # The file left behind still excludes a memory-queue process.
        with pytest.raises(DataDirInUseError), hold_data_dir(tmp_path, command="c"):
            pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_sharing_and_exclusive_holders_exclude_each_other(tmp_path: Path) -> None:
    """Redis-queue processes share; a memory-queue one is refused beside them, and they
    beside it, each told what to change."""
    with (
        hold_data_dir(tmp_path, command="r1", shared=True),
        hold_data_dir(tmp_path, command="r2", shared=True),
        pytest.raises(DataDirInUseError) as exclusive,
        hold_data_dir(tmp_path, command="m"),
    ):
        pass
    assert not exclusive.value.shared and "use the Redis queue" in str(exclusive.value)
    with (
        hold_data_dir(tmp_path, command="m"),
        pytest.raises(DataDirInUseError) as sharing,
        hold_data_dir(tmp_path, command="r", shared=True),
    ):
        pass
    assert sharing.value.shared and "memory queue, which cannot be shared" in str(sharing.value)


def test_a_holder_that_recorded_nothing_is_another_process(tmp_path: Path) -> None:
    """A lock held without a readable record is refused as held by another process."""
    handle = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataDirInUseError) as refused, hold_data_dir(tmp_path, command="x"):
            pass
    finally:
        os.close(handle)
    assert refused.value.holder is None and "in use by another process" in str(refused.value)


def test_a_lock_file_removed_while_opening_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the last holder removes the file between our open and our lock, the lock is
    taken on the file now at the path, so the next process sees it held."""
    real_open = storage.lock._open
    opened: list[int] = []

    def open_then_lose_the_file(path: Path) -> int:
        handle = real_open(path)
        if not opened:
            path.unlink()  # what a last holder leaving at that moment does
        opened.append(handle)
        return handle

    monkeypatch.setattr(storage.lock, "_open", open_then_lose_the_file)
    with hold_data_dir(tmp_path, command="me"):
        monkeypatch.setattr(storage.lock, "_open", real_open)
        assert len(opened) == 2
        with pytest.raises(DataDirInUseError), hold_data_dir(tmp_path, command="next"):
            pass


def test_a_lock_file_that_cannot_be_opened(tmp_path: Path) -> None:
    """A lock file that cannot be opened (here a directory) is refused by name."""
    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(DataDirError) as refused, hold_data_dir(tmp_path, command="x"):
        pass
    assert LOCK_NAME in str(refused.value) and str(tmp_path) in str(refused.value)
