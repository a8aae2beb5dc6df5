"""Embedded mode under fire, on real processes: kill -9, SIGTERM, Ctrl-C twice, a second
process on the same data directory, a full disk. Each scenario ends with the promise
checked: no job lost, none run twice, no usage charged twice, no process left hanging."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.harness import (
    INTERRUPTED_STATUSES,
    LONGER_PROMPT,
    START_BOUND_S,
    Lab,
    record_timing,
)
from tests.chaos.invariants import assert_invariants

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

# "Within a few seconds" of SIGTERM or a first Ctrl-C: the next step boundary, a
# checkpoint, a requeue. A second Ctrl-C exits at once. Generous, to detect hangs only.
SIGNAL_EXIT_BOUND_S = 10.0
SECOND_SIGNAL_EXIT_BOUND_S = 5.0
# The first Ctrl-C says what it saves; the second is pressed as soon as it does.
FEEDBACK_BOUND_S = 3.0


def test_kill_9_mid_job_then_next_run_finishes_it_once(lab: Lab) -> None:
    """A run killed with SIGKILL mid-job leaves its job to the next run, which finishes it
    exactly once and charges it once."""
    first = lab.generate()
    job_id = first.wait_until_running()
    first.send(signal.SIGKILL)
    assert first.wait_exit(SIGNAL_EXIT_BOUND_S, after="SIGKILL") == -signal.SIGKILL
    reruns = lab.finish_pending()
    record_timing("embedded_kill_9", reruns_to_finish=len(reruns))
    assert_invariants(lab.snapshot(), lab.runs, max_attempts={job_id: 1 + len(reruns)})


def _stop_mid_job(lab: Lab, sig: signal.Signals) -> str:
    """Start the long job, send ``sig`` at its first step; the process must exit within
    seconds leaving the job queued with its checkpoint. Returns the job's id."""
    first = lab.generate()
    job_id = first.wait_until_running()
    sent_s = first.send(sig)
    assert sent_s is not None, "the run ended before the signal"
    status = first.wait_exit(SIGNAL_EXIT_BOUND_S, after=sig.name)
    record_timing(
        f"embedded_{sig.name.lower()}",
        signal_to_exit_s=first.seconds_since(sent_s),
        exit_status=status,
    )
    job = lab.snapshot().jobs[job_id]
    assert job.state == "queued" and job.has_checkpoint, (
        f"after {sig.name} (exit {status}) the job is {job.state}, checkpoint: "
        f"{job.has_checkpoint}\n{first.tail()}"
    )
    return job_id


def test_sigterm_mid_job_requeues_with_checkpoint_and_next_run_resumes(lab: Lab) -> None:
    """SIGTERM mid-job exits within seconds with the job queued and checkpointed; the next
    run resumes it from the checkpoint and finishes it once, charged once."""
    job_id = _stop_mid_job(lab, signal.SIGTERM)
    reruns = lab.finish_pending()
    claims = [
        record
        for run in reruns
        for record in run.events()
        if record.get("event") == "job_claimed" and record.get("job_id") == job_id
    ]
    assert claims and claims[0].get("resumed") is True, f"not resumed: {claims}"
    assert_invariants(lab.snapshot(), lab.runs, max_attempts={job_id: 1 + len(reruns)})


def test_ctrl_c_mid_job_requeues_with_checkpoint_within_seconds(lab: Lab) -> None:
    """One Ctrl-C mid-job exits within seconds as interrupted, the job queued with its
    checkpoint (resumed as after SIGTERM, so no second run here)."""
    job_id = _stop_mid_job(lab, signal.SIGINT)
    (run,) = lab.runs
    assert run.returncode in INTERRUPTED_STATUSES, f"exit {run.returncode}:\n{run.tail()}"
    assert_invariants(lab.snapshot(), lab.runs, may_wait=True, max_attempts={job_id: 1})


def test_ctrl_c_twice_exits_at_once_leaving_the_job_resumable(lab: Lab) -> None:
    """The first Ctrl-C says what it saves; a second one exits at once as interrupted
    (never SIGABRT), the job left queued or running for the next run to finish once."""
    # Long enough to be still on the device when the second Ctrl-C comes, even after a
    # first one that printed nothing and let the job run on.
    first = lab.generate(LONGER_PROMPT)
    job_id = first.wait_until_running()
    seen = len(first.messages())
    first_s = first.send(signal.SIGINT)
    assert first_s is not None, "the run ended before the first Ctrl-C"
    feedback_s = first.wait_for_message(seen, FEEDBACK_BOUND_S)
    second_s = first.send(signal.SIGINT)
    status = first.wait_exit(SECOND_SIGNAL_EXIT_BOUND_S, after="the second Ctrl-C")
    record_timing(
        "embedded_sigint_twice",
        first_signal_to_feedback_s=None if feedback_s is None else round(feedback_s - first_s, 3),
        second_signal_to_exit_s=None if second_s is None else first.seconds_since(second_s),
        first_signal_to_exit_s=first.seconds_since(first_s),
        exit_status=status,
    )
    assert status != -signal.SIGABRT, f"aborted (SIGABRT):\n{first.tail()}"
    assert status in INTERRUPTED_STATUSES, f"exit {status}:\n{first.tail()}"
    assert feedback_s is not None, "the first Ctrl-C printed nothing"
    assert lab.snapshot().jobs[job_id].state in ("queued", "running")
    reruns = lab.finish_pending()
    assert_invariants(lab.snapshot(), lab.runs, max_attempts={job_id: 1 + len(reruns)})


def test_second_process_on_one_data_dir_is_refused_and_first_is_undisturbed(lab: Lab) -> None:
    """A second embedded process on a data directory in use is refused at once (exit 2,
    one line pointing at Redis mode) and the first finishes its job, claimed once."""
    first = lab.generate(LONGER_PROMPT)
    job_id = first.wait_until_running()
    second = lab.generate()
    status = second.wait_exit(START_BOUND_S, after="it started")
    record_timing(
        "embedded_second_process",
        second_start_to_exit_s=second.seconds_since(second.started_s),
        exit_status=status,
    )
    assert first.poll() is None, "the first run ended before the second was refused"
    lines = second.stderr().strip().splitlines()
    assert status == 2 and len(lines) == 1, f"second run: exit {status}, stderr:\n{second.tail()}"
    assert "redis" in lines[0].lower(), f"the refusal does not say how to share: {lines[0]}"
    assert second.job_ids() == []
    assert first.wait_exit() == 0, first.tail()
    assert_invariants(lab.snapshot(), lab.runs, max_attempts={job_id: 1})


def test_full_disk_fails_the_job_with_its_reason(lab: Lab) -> None:
    """When the image store's disk fills mid-job, the job fails with its reason, the CLI
    exits non-zero with one line, nothing is charged and nothing is left running."""
    disk = lab.full_disk()
    run = lab.generate()
    run.wait_until_running()
    disk.fill()
    status = run.wait_exit(after="the disk filled")
    record_timing(
        "embedded_disk_full",
        injected=disk.how,
        start_to_exit_s=run.seconds_since(run.started_s),
        exit_status=status,
    )
    messages = run.messages()
    assert status not in (0, None) and len(messages) == 1, (
        f"exit {status}, lines for a person: {messages}"
    )
    (job,) = lab.snapshot().jobs.values()
    assert job.state == "failed", f"the job is {job.state}"
    assert_invariants(lab.snapshot(), lab.runs, may_fail=True)
