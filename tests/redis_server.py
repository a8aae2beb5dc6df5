"""A private ``redis-server`` of one test on a free port, to stop, freeze and start again.

Nothing here touches the shared Redis at 127.0.0.1:6379. The server runs without
persistence; only a ``stop(keep_data=True)`` writes the dump its next start loads (a
Redis restarted with its data).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# A start-up or a stop that takes longer than this is a hang, not slowness.
START_BOUND_S = 20.0
STOP_BOUND_S = 15.0
PING_EVERY_S = 0.02
DUMP_FILE = "dump.rdb"
LOG_FILE = "redis.log"


def free_port() -> int:
    """A TCP port nothing listens on at the moment of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of one test on a free port in ``workdir`` (its dump and log),
    which the test may stop, freeze and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        """Pick the port and the directory; nothing runs until :meth:`start`."""
        if shutil.which("redis-server") is None:
            raise AssertionError("redis-server is not on PATH; these tests start their own")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        if self.port == 6379:  # pragma: no cover - that one is in use, so never free
            raise AssertionError("refusing to run a private Redis on the shared port")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = START_BOUND_S) -> None:
        """Start the server (again, on the same port) and return once it answers PING."""
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--dbfilename", DUMP_FILE,
        ]  # fmt: skip
        with (self.dir / LOG_FILE).open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                log_text = (self.dir / LOG_FILE).read_text(errors="replace")[-2000:]
                raise AssertionError(f"private redis-server did not start:\n{log_text}")
            time.sleep(PING_EVERY_S)

    def stop(self, *, keep_data: bool | None = None) -> None:
        """SIGTERM (nothing saved), or SHUTDOWN SAVE / NOSAVE (dump removed) as keep_data says."""
        process = self._process
        assert process is not None and process.poll() is None, "the server is not running"
        if keep_data is None:
            process.terminate()
        else:
            self._shutdown(save=keep_data)
        try:
            process.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"redis-server on port {self.port} did not stop") from None
        self._process = None
        if keep_data is False:
            (self.dir / DUMP_FILE).unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing until thawed."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen server answers again."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGCONT)

    def ping(self) -> bool:
        """Whether the server answers PING (one try, no client-side retries)."""
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str, timeout_s: float = 2.0) -> bytes:
        """One command over a bare socket (no client retries); the start of the reply."""
        # b"" when the server closed the connection. A client library's reconnects and
        # back-offs would stretch the outage being timed.
        request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            sock.sendall(request.encode())
            return sock.recv(256)

    def close(self) -> None:
        """Kill the server if it still runs (the cleanup, whatever the test did)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=STOP_BOUND_S)
        self._process = None

    def _shutdown(self, *, save: bool) -> None:
        """Send SHUTDOWN SAVE or NOSAVE; the server closes the connection on success."""
        with contextlib.suppress(OSError):
            reply = self.command("SHUTDOWN", "SAVE" if save else "NOSAVE")
            assert not reply.startswith(b"-"), f"SHUTDOWN refused: {reply!r}"
