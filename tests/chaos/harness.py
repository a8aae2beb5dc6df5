"""The chaos harness: real ``imagine`` processes on a data directory of their own, the
signals sent to them, and the lab that stops everything a scenario started.

Every process runs in its own process group with the session's tiny model, logging
JSON lines to a file; a run that outlives its bound is killed (its whole group) and
fails the test, and :class:`Lab` kills whatever is left when the test ends, pass or
fail. The faults live in :mod:`tests.chaos.faults` and :mod:`tests.redis_server`, the
promise checked at the end in :mod:`tests.chaos.invariants`.

Waits poll (the log file, the process) against generous bounds that only detect a
hang; the measured times are reported (:func:`record_timing`), never asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import Settings
from tests.chaos.faults import FullDisk
from tests.chaos.invariants import Snapshot, read_snapshot
from tests.redis_server import PrivateRedis

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# 64x64 images (the smallest pixel budget) and one thread per process keep a step cheap
# on a busy CPU; the long job has enough steps to be caught mid-run by a signal sent
# when its first step is reported.
PIXEL_BUDGET = 64 * 64
LONG_PROMPT = "a lighthouse in a storm --steps 50 --n 1 --seed 5"
# Outlasts another process's start-up (importing torch takes seconds), or a Redis outage.
LONGER_PROMPT = "a lighthouse in a storm --steps 200 --n 1 --seed 5"
SHORT_PROMPT = "a small boat --steps 4 --n 1 --seed 6"
MAX_STEPS = 1000

# Bounds that detect a hang, sized for two busy cores; never performance figures.
START_BOUND_S = 60.0  # start-up (torch, the model) until the job's first step
RUN_BOUND_S = 60.0  # a whole run, start to exit
POLL_S = 0.02

# Log records that say a job ended: the worker's summary line, the CLI's final stage.
FINISH_EVENTS = ("job_finished", "job_succeeded", "job_failed", "job_cancelled")
# Exit statuses of a run stopped by Ctrl-C: the CLI's own, or the signal's default action.
INTERRUPTED_STATUSES = (130, -signal.SIGINT)


# -- the environment of one data directory -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChaosEnv:
    """What every process of one scenario shares: the data directory, the tiny model,
    and any extra settings (Redis mode)."""

    data_dir: Path
    model_dir: Path
    extra: Mapping[str, str] = field(default_factory=dict)

    def with_redis(self, url: str, namespace: str, *, lease_s: float = 20.0) -> ChaosEnv:
        """The same data directory in Redis mode, on ``url`` under ``namespace``."""
        redis = {
            "IMAGINE_QUEUE__BACKEND": "redis",
            "IMAGINE_QUEUE__REDIS_URL": url,
            "IMAGINE_QUEUE__NAMESPACE": namespace,
            "IMAGINE_QUEUE__LEASE_S": str(lease_s),
        }
        return ChaosEnv(self.data_dir, self.model_dir, {**self.extra, **redis})

    @property
    def database_path(self) -> Path:
        """The data directory's SQLite file, as the settings name it."""
        return Settings(data_dir=self.data_dir).database_path

    @property
    def images_dir(self) -> Path:
        """Where the image store writes, as the settings name it."""
        return Settings(data_dir=self.data_dir).images_dir

    def environ(self) -> dict[str, str]:
        """The child's environment: this shell's minus any IMAGINE_* variable, plus ours."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
        ours = {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "IMAGINE_DATA_DIR": str(self.data_dir),
            "IMAGINE_ENGINE__DEFAULT_MODEL": "tiny",
            "IMAGINE_ENGINE__MODELS__TINY__SOURCE": str(self.model_dir),
            "IMAGINE_ENGINE__DEVICE": "cpu",
            "IMAGINE_ENGINE__TORCH_THREADS": "1",
            "IMAGINE_PROMPT__PIXEL_BUDGET": str(PIXEL_BUDGET),
            "IMAGINE_PROMPT__MAX_STEPS": str(MAX_STEPS),
            "IMAGINE_LOG__FORMAT": "json",
            "IMAGINE_LOG__LEVEL": "info",
        }
        return {**base, **ours, **self.extra}


# -- one real process ------------------------------------------------------------------------


class CliRun:
    """``python -m cli <args>`` in its own process group, stdout and stderr in files."""

    def __init__(self, name: str, args: Sequence[str], env: ChaosEnv, log_dir: Path) -> None:
        self.name = name
        self.args = tuple(args)
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                [PYTHON, "-m", "cli", *args],
                cwd=REPO_ROOT,
                env=env.environ(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        # A session leader: its group id is its pid, and the group outlives it.
        self.pgid = self._proc.pid
        self.started_s = time.monotonic()
        self.exited_s: float | None = None
        self.killed_by_harness = False

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs (a negative number: killed by a signal)."""
        return self.poll()

    def poll(self) -> int | None:
        """The exit status if it has exited, noting when that was first seen."""
        status = self._proc.poll()
        if status is not None and self.exited_s is None:
            self.exited_s = time.monotonic()
        return status

    def stderr(self) -> str:
        """Everything written to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        """Everything written to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log records written so far."""
        return [record for line in self.stderr().splitlines() if (record := _json(line))]

    def messages(self) -> list[str]:
        """The stderr lines meant for a person: everything but the JSON log records."""
        return [line for line in self.stderr().splitlines() if line.strip() and not _json(line)]

    def job_ids(self) -> list[str]:
        """The jobs this run submitted."""
        return [str(r["job_id"]) for r in self.events() if r.get("event") == "generate_submitted"]

    def tail(self, lines: int = 12) -> str:
        """The end of stderr, for a failure message."""
        return "\n".join(self.stderr().splitlines()[-lines:])

    def wait_for(
        self, event: str, timeout_s: float = START_BOUND_S, **fields: object
    ) -> dict[str, Any]:
        """The first log record named ``event`` (with ``fields``), polling until it shows."""
        deadline = time.monotonic() + timeout_s
        while True:
            for record in self.events():
                if record.get("event") == event and _has(record, fields):
                    return record
            if self.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.returncode} before logging {event}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"{self.name} logged no {event} within {timeout_s:.0f} s:\n{self.tail()}"
                )
            time.sleep(POLL_S)

    def wait_until_running(self, timeout_s: float = START_BOUND_S) -> str:
        """The id of this run's one job, once its first step is reported and while it
        has not finished: the moment a signal catches it mid-run."""
        started = self.wait_for("job_started", timeout_s)
        job_id = str(started["job_id"])
        finished = [r for r in self.events() if r.get("event") in FINISH_EVENTS]
        assert not finished, f"{self.name}: the job finished before it could be caught mid-run"
        return job_id

    def wait_for_message(self, seen: int, timeout_s: float) -> float | None:
        """When a line for a person beyond the first ``seen`` appeared (monotonic), or
        None within the bound (or if the process exited first)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.messages()) > seen:
                return time.monotonic()
            if self.poll() is not None:
                return None
            time.sleep(POLL_S)
        return None

    def send(self, sig: signal.Signals) -> float | None:
        """Send ``sig`` to the whole group, as a terminal's Ctrl-C does; the monotonic time
        it was sent, or None when the process had already exited."""
        if self.poll() is not None:
            return None
        sent_s = time.monotonic()
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return None
        return sent_s

    def wait_exit(self, timeout_s: float = RUN_BOUND_S, *, after: str = "it started") -> int:
        """The exit status, polling; past the bound the group is killed and the test fails."""
        deadline = time.monotonic() + timeout_s
        while (status := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"{self.name} still running {timeout_s:.0f} s after {after}; killed it."
                    f"\nstderr tail:\n{self.tail()}"
                )
            time.sleep(POLL_S)
        return status

    def seconds_since(self, since_s: float) -> float:
        """Seconds from ``since_s`` (monotonic) to the exit."""
        if self.exited_s is None:
            raise AssertionError(f"{self.name} has not exited")
        return round(self.exited_s - since_s, 3)

    def kill(self) -> None:
        """SIGKILL the whole group and reap the process (the harness's cleanup)."""
        if self.poll() is None:
            self.killed_by_harness = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self.poll()

    def left_alive(self) -> list[int]:
        """Processes still alive in this run's group (the run itself or anything it started)."""
        return live_group_members(self.pgid)


def _json(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _has(record: Mapping[str, Any], fields: Mapping[str, object]) -> bool:
    return all(record.get(key) == value for key, value in fields.items())


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are alive (zombies excluded)."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - Linux is where the suite runs
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


# -- the lab: one scenario's processes, servers and mounts -------------------------------


class Lab:
    """One scenario's data directory and everything it starts, all stopped at the end."""

    def __init__(self, workdir: Path, model_dir: Path) -> None:
        self.workdir = workdir
        self.env = ChaosEnv(workdir / "data", model_dir)
        self.runs: list[CliRun] = []
        self._redis: list[PrivateRedis] = []
        self._disks: list[FullDisk] = []

    def start(self, args: Sequence[str], *, env: ChaosEnv | None = None) -> CliRun:
        """Start ``python -m cli <args>`` on this lab's data directory."""
        run = CliRun(f"run{len(self.runs) + 1}", args, env or self.env, self.workdir)
        self.runs.append(run)
        return run

    def generate(self, prompt: str = LONG_PROMPT, *, env: ChaosEnv | None = None) -> CliRun:
        """Start ``imagine generate <prompt>``."""
        return self.start(["generate", prompt], env=env)

    def redis(self) -> PrivateRedis:
        """A private Redis, started."""
        server = PrivateRedis(self.workdir / f"redis{len(self._redis) + 1}")
        self._redis.append(server)
        server.start()
        return server

    def full_disk(self) -> FullDisk:
        """A full-disk injector on this data directory's image store, prepared."""
        disk = FullDisk(self.env.images_dir)
        self._disks.append(disk)
        disk.prepare()
        return disk

    def snapshot(self) -> Snapshot:
        """The database's state now."""
        return read_snapshot(self.env.database_path)

    def finish_pending(
        self, prompt: str = SHORT_PROMPT, *, env: ChaosEnv | None = None, max_runs: int = 3
    ) -> list[CliRun]:
        """Run ``generate`` again (its own short job each time) until no earlier job is
        pending: what a user does after a crash. Each run must succeed."""
        reruns: list[CliRun] = []
        while self.snapshot().pending() and len(reruns) < max_runs:
            run = self.generate(prompt, env=env)
            reruns.append(run)
            status = run.wait_exit()
            assert status == 0, f"{run.name} exited {status}:\n{run.tail()}"
        pending = [(job.id, job.state) for job in self.snapshot().pending()]
        assert not pending, f"still pending after {len(reruns)} runs: {pending}"
        return reruns

    def close(self) -> None:
        """Kill every process group, then stop every private Redis, then unmount every
        tmpfs; each step runs even if an earlier one raised."""
        with contextlib.ExitStack() as stack:  # callbacks run last in, first out
            for disk in self._disks:
                stack.callback(disk.close)
            for server in self._redis:
                stack.callback(server.close)
            for run in self.runs:
                stack.callback(run.kill)


@contextlib.contextmanager
def open_lab(workdir: Path, model_dir: Path) -> Iterator[Lab]:
    """A :class:`Lab` that is closed whatever the test does."""
    lab = Lab(workdir, model_dir)
    try:
        yield lab
    finally:
        lab.close()


# -- measured times ---------------------------------------------------------------------------

TIMINGS: list[dict[str, Any]] = []


def record_timing(scenario: str, **figures: object) -> None:
    """Keep a scenario's measured times for the session's report (and print them)."""
    entry = {"scenario": scenario, **figures}
    TIMINGS.append(entry)
    print(f"chaos-timing {json.dumps(entry)}")
