"""The harness checks itself: the invariants catch each broken promise, a private Redis
restarts with or without its data, a process group is seen alive until it ends."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import live_group_members
from tests.chaos.invariants import JobRecord, Snapshot, assert_invariants
from tests.redis_server import PrivateRedis

pytestmark = pytest.mark.chaos


@dataclasses.dataclass
class _FinishedRun:
    """What the invariants read of a run: an exited process that submitted ``jobs``."""

    jobs: list[str]
    finished: list[str] = dataclasses.field(default_factory=list)
    name: str = "run1"
    killed_by_harness: bool = False

    def poll(self) -> int:
        return 0

    def left_alive(self) -> list[int]:
        return []

    def job_ids(self) -> list[str]:
        return self.jobs

    def events(self) -> list[dict[str, Any]]:
        return [{"event": "job_finished", "state": "succeeded", "job_id": j} for j in self.finished]


DONE = JobRecord("a", "succeeded", 1, None, 1, False, 50, 1, images=2, successes=1)


def _check(jobs: list[JobRecord], usage: int, run: _FinishedRun) -> None:
    snapshot = Snapshot({job.id: job for job in jobs}, usage)
    assert_invariants(snapshot, [run], max_attempts={"a": 1})


def test_invariants_hold_for_one_job_done_once() -> None:
    """One job succeeded once, charged once, with its images: the promise holds."""
    _check([DONE], 1, _FinishedRun(["a"], ["a"]))


BROKEN = {
    "charged twice": ([DONE], 2, _FinishedRun(["a"], ["a"])),
    "finished twice": ([DONE], 1, _FinishedRun(["a"], ["a", "a"])),
    "two results": ([dataclasses.replace(DONE, successes=2)], 1, _FinishedRun(["a"])),
    "claimed twice": ([dataclasses.replace(DONE, attempts=2)], 1, _FinishedRun(["a"])),
    "left running": ([dataclasses.replace(DONE, state="running")], 0, _FinishedRun(["a"])),
    "lost": ([DONE], 1, _FinishedRun(["a", "b"])),
    "failed": ([dataclasses.replace(DONE, state="failed", images=0, successes=0)], 0,
                        _FinishedRun(["a"])),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN.keys())
def test_invariants_catch_each_broken_promise(
    case: tuple[list[JobRecord], int, _FinishedRun],
) -> None:
    """Each way of breaking the promise (charged or run twice, left running, lost,
    failed where failing is not allowed) fails the invariant check."""
    jobs, usage, run = case
    with pytest.raises(AssertionError):
        _check(jobs, usage, run)


def test_private_redis_restarts_with_or_without_its_data(tmp_path: Path) -> None:
    """A private Redis stopped with keep_data comes back with its keys, without it empty."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        assert server.port != 6379
        server.command("SET", "k", "v")
        server.stop(keep_data=True)
        assert not server.ping()
        server.start()
        assert server.command("GET", "k") == b"$1\r\nv\r\n"
        server.stop(keep_data=False)
        server.start()
        assert server.command("GET", "k") == b"$-1\r\n"
    finally:
        server.close()


def test_a_process_group_is_alive_until_it_ends() -> None:
    """A started group is seen alive; once killed and reaped, nothing of it is."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        assert live_group_members(proc.pid) == [proc.pid]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert live_group_members(proc.pid) == []
