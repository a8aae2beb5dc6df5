"""A private redis-server a test may stop and start again (never the shared one), and
a poll for conditions nothing signals."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# A start-up or a stop that takes longer than this is a hang, not slowness.
REDIS_BOUND_S = 10.0
# A condition a test waits for that has not come after this never will.
EVENTUALLY_BOUND_S = 10.0


async def eventually(check: Callable[[], Awaitable[bool] | bool]) -> None:
    """Return once ``check`` holds, polling it; TimeoutError (a hang) after the bound."""
    async with asyncio.timeout(EVENTUALLY_BOUND_S):
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(0.02)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of one test on a free port; its append-only file keeps the data
    across :meth:`stop` and :meth:`start`, as a production Redis with persistence does."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients reach it."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on its port and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REDIS_BOUND_S
        while time.monotonic() < deadline:
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM: it writes its data and exits)."""
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(REDIS_BOUND_S)
        self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started private redis-server, stopped when the test ends."""
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = PrivateRedis(free_port(), data_dir)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait(REDIS_BOUND_S)
