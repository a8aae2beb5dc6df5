"""Faults the chaos scenarios inject: a private ``redis-server`` to stop and start
again, and a full disk under the image store.

Nothing here touches the Redis at 127.0.0.1:6379: a private server runs on a free port.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PING_EVERY_S = 0.02


def free_port() -> int:
    """A TCP port nothing listens on at the moment of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of this test alone on a free port, which the test may stop and
    start again; persistence is off, except the dump a ``stop(keep_data=True)`` writes
    so that a restart finds the keys again (a Redis restarted with its data)."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise AssertionError("redis-server is not on PATH; the Redis scenarios start their own")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        if self.port == 6379:  # pragma: no cover - that one is in use, so never free
            raise AssertionError("refusing to run a private Redis on the shared port")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL the processes under test connect to."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the server (again) and return once it answers PING."""
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--dbfilename", "dump.rdb",
        ]  # fmt: skip
        with (self.dir / "redis.log").open("ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                log_text = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"private redis-server did not start:\n{log_text}")
            time.sleep(PING_EVERY_S)

    def ping(self) -> bool:
        """Whether the server answers PING (one try, no client-side retries)."""
        try:
            return redis_command(self.port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, keep_data: bool = True) -> None:
        """SHUTDOWN SAVE, or NOSAVE with any earlier dump removed so that the next start
        is empty; returns once the process has ended."""
        with contextlib.suppress(OSError):
            reply = redis_command(self.port, "SHUTDOWN", "SAVE" if keep_data else "NOSAVE")
            # On success the server closes the connection without a reply.
            assert not reply.startswith(b"-"), f"SHUTDOWN refused: {reply!r}"
        if self._proc is not None:
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.close()
        if not keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)

    def close(self) -> None:
        """Kill the server if it runs (the harness's cleanup)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


def redis_command(port: int, *words: str, timeout_s: float = 2.0) -> bytes:
    """Send one command to a Redis on ``port`` and return the start of its reply (b""
    when the server closed the connection). A bare socket: a client library's
    reconnects and back-offs would stretch the outage being timed."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request.encode())
        return sock.recv(256)


# -- a full disk -----------------------------------------------------------------------------


class FullDisk:
    """Makes the image store's writes fail with ``OSError`` while a job runs.

    Preferred: a private 1 MiB tmpfs mounted on the data directory's ``images`` before
    the run, filled to the last byte once the job has started (``ENOSPC``, what a full
    disk gives). Where mounting is refused (no root, no CAP_SYS_ADMIN in a container):
    ``images`` is replaced by a plain file once the job has started, so every write under
    it fails with ``NotADirectoryError``. :attr:`how` says which one ran.
    """

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.how = "file"
        self._mounted = False

    def prepare(self) -> None:
        """Before the run: mount the tmpfs if this machine allows it."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(self.images_dir)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode == 0:
            self._mounted = True
            self.how = "tmpfs"

    def fill(self) -> None:
        """Once the job runs: leave no byte free (or no directory) for the image store."""
        if self._mounted:
            with (self.images_dir / ".filler").open("wb") as filler:
                _write_until_full(filler.fileno())
            return
        aside = self.images_dir.with_name(f"{self.images_dir.name}.aside")
        if self.images_dir.exists():
            self.images_dir.rename(aside)
        self.images_dir.write_bytes(b"not a directory")

    def close(self) -> None:
        """Unmount the tmpfs (the harness's cleanup)."""
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.images_dir)], capture_output=True, check=False)
            self._mounted = False


def _write_until_full(fd: int) -> None:
    chunk = b"\0" * 4096
    while True:
        try:
            os.write(fd, chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return
            raise
