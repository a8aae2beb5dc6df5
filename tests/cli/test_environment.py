"""A bad environment, met by a real `imagine` process: one line on stderr, exit status 2,
no traceback, and nothing written (no database, no output, no probe left behind)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NOT_SQLITE = b"these bytes were never an SQLite database\n" * 4


def _imagine(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **env},
    )


def _refused(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """The one line a refused command printed; fails unless it exited 2 with exactly one
    line naming everything in ``named``."""
    error = result.stderr.strip()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in error and error.count("\n") == 0, error
    assert error.startswith("imagine: error: ")
    for name in named:
        assert name in error
    return error


def _tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory in which nothing can be created, root included: a read-only
    tmpfs where this process may mount one, else permission bits (they bind non-root)."""
    target = tmp_path / "read-only"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "imagine-test", str(target)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root without the right to mount: no read-only directory")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    """A data directory that is a file is refused; the file is left as it was."""
    data = tmp_path / "data"
    data.write_bytes(b"not a directory")
    error = _refused(_imagine("generate", "a cat", IMAGINE_DATA_DIR=str(data)), str(data))
    assert "is a file" in error
    assert data.read_bytes() == b"not a directory"
    assert _tree(tmp_path) == ["data"]


def test_data_dir_under_a_file(tmp_path: Path) -> None:
    """A data directory whose parent is a file cannot be created: refused, nothing made."""
    data = tmp_path / "file" / "data"
    (tmp_path / "file").write_bytes(b"")
    _refused(_imagine("migrate", IMAGINE_DATA_DIR=str(data)), str(data), "cannot be created")
    assert _tree(tmp_path) == ["file"]


@pytest.mark.parametrize("data", ["/proc/imagine", "/sys/kernel/imagine"])
def test_data_dir_under_proc(data: str) -> None:
    """A data directory in /proc or /sys (virtual file systems) is refused by name."""
    _refused(_imagine("generate", "a cat", IMAGINE_DATA_DIR=data), data, "/proc or /sys")


def test_read_only_data_dir(read_only_dir: Path) -> None:
    """A data directory nothing can be written in is refused before any file is made."""
    error = _refused(
        _imagine("generate", "a cat", IMAGINE_DATA_DIR=str(read_only_dir)), str(read_only_dir)
    )
    assert "not writable" in error
    assert _tree(read_only_dir) == []


def test_read_only_data_dir_inside(read_only_dir: Path) -> None:
    """A data directory to be created inside a read-only one is refused, not half-made."""
    data = read_only_dir / "imagine"
    _refused(_imagine("degrade", IMAGINE_DATA_DIR=str(data)), str(data), "cannot be created")
    assert _tree(read_only_dir) == []


def test_database_that_is_not_sqlite(tmp_path: Path) -> None:
    """A database file that is not SQLite is refused by path; it is not touched and no
    journal appears beside it."""
    (tmp_path / "imagine.db").write_bytes(NOT_SQLITE)
    result = _imagine("generate", "a cat", IMAGINE_DATA_DIR=str(tmp_path))
    error = _refused(result, str(tmp_path / "imagine.db"), "file is not a database")
    assert "move it aside" in error
    assert (tmp_path / "imagine.db").read_bytes() == NOT_SQLITE
    assert _tree(tmp_path) == ["imagine.db"]


def test_database_that_is_a_directory(tmp_path: Path) -> None:
    """A directory where the database file should be is refused in one line."""
    (tmp_path / "imagine.db").mkdir()
    _refused(_imagine("migrate", IMAGINE_DATA_DIR=str(tmp_path)), str(tmp_path / "imagine.db"))
    assert _tree(tmp_path) == ["imagine.db"]


def test_database_from_a_newer_version(tmp_path: Path) -> None:
    """A database migrated by newer code is refused in one line, schema left alone."""
    with contextlib.closing(sqlite3.connect(tmp_path / "imagine.db")) as db:
        db.execute("PRAGMA user_version = 999")
    _refused(_imagine("migrate", IMAGINE_DATA_DIR=str(tmp_path)), "999", "newer")
    with contextlib.closing(sqlite3.connect(tmp_path / "imagine.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (999,)


def test_empty_data_dir_variable(tmp_path: Path) -> None:
    """IMAGINE_DATA_DIR set but empty is refused; nothing lands in the working directory."""
    _refused(_imagine("generate", "a cat", cwd=tmp_path, IMAGINE_DATA_DIR=""), "IMAGINE_DATA_DIR")
    assert _tree(tmp_path) == []


def test_redis_url_with_a_wrong_scheme(tmp_path: Path) -> None:
    """A Redis URL with a scheme Redis does not speak is refused as the settings load: the
    password is never shown and the data directory is not created."""
    data = tmp_path / "data"
    result = _imagine(
        "generate",
        "a cat",
        IMAGINE_DATA_DIR=str(data),
        IMAGINE_QUEUE__BACKEND="redis",
        IMAGINE_QUEUE__REDIS_URL="http://:hunter2@127.0.0.1:6379/0",
    )
    error = _refused(result, "queue.redis_url", "redis://")
    assert "hunter2" not in error
    assert not data.exists()


@pytest.mark.parametrize("user_id", [str(2**64), "-1"])
def test_user_id_out_of_range(tmp_path: Path, user_id: str) -> None:
    """A --user-id that SQLite's 64-bit INTEGER cannot hold, or a negative one, is refused
    before the database exists."""
    data = tmp_path / "data"
    result = _imagine("generate", "a cat", "--user-id", user_id, IMAGINE_DATA_DIR=str(data))
    _refused(result, "--user-id", user_id)
    assert not data.exists()


def test_output_under_proc(tmp_path: Path) -> None:
    """-o into a directory where no file can be created (/proc, root included) is refused
    before any work: no database."""
    data = tmp_path / "data"
    result = _imagine("generate", "a cat", "-o", "/proc/grid.png", IMAGINE_DATA_DIR=str(data))
    _refused(result, "/proc", "not writable")
    assert not data.exists()


def test_output_into_read_only_dir(tmp_path: Path, read_only_dir: Path) -> None:
    """-o into a read-only directory is refused by creating a file there, not by asking
    os.access (which says yes to root); no probe or database is left behind."""
    data = tmp_path / "data"
    out = read_only_dir / "grid.png"
    result = _imagine("generate", "a cat", "-o", str(out), IMAGINE_DATA_DIR=str(data))
    _refused(result, str(read_only_dir), "not writable")
    assert _tree(read_only_dir) == []
    assert not data.exists()


def test_output_under_a_file(tmp_path: Path) -> None:
    """-o whose directory is a file is refused, naming it."""
    (tmp_path / "file").write_bytes(b"")
    result = _imagine("generate", "a cat", "-o", str(tmp_path / "file" / "grid.png"))
    _refused(result, str(tmp_path / "file"), "not a directory")


def test_bench_redis_url_with_a_wrong_scheme() -> None:
    """`bench queue --redis-url` with a scheme Redis does not speak is refused the same
    way, password unseen, before any connection is tried."""
    result = _imagine("bench", "queue", "--backend", "redis", "--redis-url", "http://:hunter2@x")
    assert "hunter2" not in _refused(result, "--redis-url", "redis://")
