"""The promise every chaos scenario ends with, checked against the data directory's
database and the processes' logs: no job lost, none run twice, no usage charged twice,
no process left hanging."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

PENDING_STATES = ("submitted", "queued", "running")


class RunRecord(Protocol):
    """What the check reads of one process (a :class:`tests.chaos.harness.CliRun`)."""

    name: str
    killed_by_harness: bool

    def poll(self) -> int | None:
        """The exit status, None while it runs."""
        ...

    def left_alive(self) -> list[int]:
        """Pids of its group still alive."""
        ...

    def job_ids(self) -> list[str]:
        """The jobs it submitted."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """Its JSON log records."""
        ...


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as the database holds it, with its results and ledger counts."""

    id: str
    state: str
    attempts: int
    error: str | None
    n: int
    has_checkpoint: bool
    step: int
    finished_at_ms: int | None
    images: int
    successes: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The jobs and the usage a data directory's database records."""

    jobs: dict[str, JobRecord]
    usage_jobs: int

    def pending(self) -> list[JobRecord]:
        """Jobs not finished: submitted, queued or running."""
        return [job for job in self.jobs.values() if job.state in PENDING_STATES]

    def succeeded(self) -> list[JobRecord]:
        """Jobs that succeeded."""
        return [job for job in self.jobs.values() if job.state == "succeeded"]


def read_snapshot(database_path: Path) -> Snapshot:
    """Jobs (state, attempts, error, checkpoint, images, ledger successes) and usage."""
    if not database_path.exists():
        return Snapshot({}, 0)
    with contextlib.closing(sqlite3.connect(database_path, timeout=30)) as db:
        images = Counter(job_id for (job_id,) in db.execute("SELECT job_id FROM images"))
        successes = Counter(
            job_id
            for (job_id,) in db.execute(
                "SELECT job_id FROM ledger_entries WHERE entry = 'succeeded'"
            )
        )
        rows = db.execute(
            "SELECT id, state, attempts, error, spec_json, checkpoint IS NOT NULL, step,"
            " finished_at_ms FROM jobs"
        ).fetchall()
        (usage_jobs,) = db.execute("SELECT COALESCE(SUM(jobs), 0) FROM usage").fetchone()
    jobs = {
        job_id: JobRecord(
            id=job_id,
            state=state,
            attempts=attempts,
            error=error,
            n=int(json.loads(spec_json).get("n") or 1),
            has_checkpoint=bool(has_checkpoint),
            step=step,
            finished_at_ms=finished_at_ms,
            images=images[job_id],
            successes=successes[job_id],
        )
        for job_id, state, attempts, error, spec_json, has_checkpoint, step, finished_at_ms in rows
    }
    return Snapshot(jobs, int(usage_jobs))


# -- the promise -----------------------------------------------------------------------------


def assert_invariants(
    snapshot: Snapshot,
    runs: Sequence[RunRecord],
    *,
    may_fail: bool = False,
    may_wait: bool = False,
    max_attempts: Mapping[str, int] | None = None,
) -> None:
    """No process left hanging, no job lost, none run twice, no usage charged twice.

    ``runs`` are every process of the scenario on this data directory. Every job ends
    succeeded; or failed with its reason, where ``may_fail``; or queued with its
    checkpoint, where ``may_wait`` (for a scenario whose next run is not part of it).
    Each job is claimed at most once per process unless ``max_attempts`` says otherwise.
    """
    _assert_no_process_left(runs)
    _assert_no_job_lost(snapshot, runs, may_fail=may_fail, may_wait=may_wait)
    _assert_none_run_twice(snapshot, runs, max_attempts or {})
    succeeded = len(snapshot.succeeded())
    assert snapshot.usage_jobs == succeeded, (
        f"usage charged for {snapshot.usage_jobs} jobs, {succeeded} succeeded"
    )


def _assert_no_process_left(runs: Sequence[RunRecord]) -> None:
    for run in runs:
        assert run.poll() is not None, f"{run.name} is still running"
        assert not run.killed_by_harness, f"{run.name} hung and was killed by the harness"
        assert not run.left_alive(), f"{run.name} left processes alive: {run.left_alive()}"


def _assert_no_job_lost(
    snapshot: Snapshot, runs: Sequence[RunRecord], *, may_fail: bool, may_wait: bool
) -> None:
    submitted = {job_id for run in runs for job_id in run.job_ids()}
    missing = submitted - snapshot.jobs.keys()
    assert not missing, f"submitted jobs missing from the database: {sorted(missing)}"
    for job in snapshot.jobs.values():
        if job.state == "failed" and may_fail:
            assert job.error, f"job {job.id} failed without a reason"
        elif job.state == "queued" and may_wait:
            assert job.has_checkpoint, f"job {job.id} was requeued without its checkpoint"
        else:
            assert job.state == "succeeded", f"job {job.id} ended {job.state} ({job.error})"


def _assert_none_run_twice(
    snapshot: Snapshot, runs: Sequence[RunRecord], max_attempts: Mapping[str, int]
) -> None:
    finished = Counter(
        str(record.get("job_id"))
        for run in runs
        for record in run.events()
        if record.get("event") == "job_finished" and record.get("state") == "succeeded"
    )
    for job in snapshot.jobs.values():
        bound = max_attempts.get(job.id, len(runs))
        assert job.attempts <= bound, f"job {job.id} was claimed {job.attempts} times (<= {bound})"
        assert finished[job.id] <= 1, f"job {job.id} finished {finished[job.id]} times"
        if job.state == "succeeded":
            assert job.successes == 1, f"job {job.id} recorded {job.successes} results"
            assert job.images == job.n + 1, f"job {job.id} has {job.images} images, not n + 1"
        else:
            assert job.successes == 0 and job.images == 0, f"{job.state} job {job.id} has results"
