"""The batching core: one shape at a time, row limits, out-of-memory splits lose no job."""

from __future__ import annotations

import itertools
import queue
from dataclasses import replace

import pytest
import torch

from backend.engine import batch as batch_module
from backend.engine.batch import BatchCore, BatchKey, BatchLimits, DeviceRunner
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import ActiveJob
from backend.engine.types import EngineEvent, Outcome, Request
from backend.models import JobSpec
from tests.backend.engine.jobs import max_diff, pixels, run_core

SPEC = JobSpec(
    prompt="p",
    seed=1,
    width=64,
    height=64,
    steps=3,
    guidance=7.0,
    model="tiny",
    n=1,
    scheduler="euler",
)


def drain(core: BatchCore) -> list[tuple[str, Outcome, int]]:
    log = []
    while not core.idle:
        log += [(e.job_id, e.outcome, len(core.running)) for e in core.step()]
    return log


def test_other_shape_waits_for_the_running_shape_to_drain(runtime: ModelRuntime) -> None:
    """A job of another latent shape starts only after the running shape has finished."""
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("square", SPEC))
    core.submit(Request("wide", replace(SPEC, width=128)))
    core.submit(Request("square2", replace(SPEC, seed=2)))
    log = drain(core)
    started = [job for job, outcome, _ in log if outcome is Outcome.STARTED]
    finished = [job for job, outcome, _ in log if outcome is Outcome.FINISHED]
    assert started == ["square", "square2", "wide"]
    assert finished.index("square") < started.index("wide")
    assert finished.index("square2") < started.index("wide")


def test_row_limit_caps_the_running_batch(runtime: ModelRuntime) -> None:
    """With 4 rows allowed, guided one-sample jobs (2 rows each) run two at a time."""
    core = BatchCore(lambda _name: runtime, BatchLimits(max_rows=4))
    for index in range(5):
        core.submit(Request(f"j{index}", replace(SPEC, seed=index)))
    log = drain(core)
    assert max(running for _, _, running in log) == 2
    assert sum(outcome is Outcome.FINISHED for _, outcome, _ in log) == 5


def test_out_of_memory_splits_the_batch_and_loses_nothing(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that runs out of memory with four jobs halves the batch, remembers the
    smaller limit, and every job still finishes."""
    real_step = batch_module.denoise_step

    def step_or_oom(rt: ModelRuntime, jobs: list[ActiveJob]) -> dict[str, Exception]:
        if len(jobs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(rt, jobs)

    monkeypatch.setattr(batch_module, "denoise_step", step_or_oom)
    core = BatchCore(lambda _name: runtime)
    for index in range(4):
        core.submit(Request(f"j{index}", replace(SPEC, seed=index)))
    log = drain(core)
    finished = {job for job, outcome, _ in log if outcome is Outcome.FINISHED}
    assert finished == {"j0", "j1", "j2", "j3"}
    assert not any(outcome is Outcome.FAILED for _, outcome, _ in log)
    assert core.limits.rows_by_key[BatchKey("tiny", 4, 8, 8)] == 4


def test_batch_key_names_the_model_and_latent_shape(runtime: ModelRuntime) -> None:
    """The running batch's key is a BatchKey read by name: model, latent channels and size."""
    core = BatchCore(lambda _name: runtime)
    assert core.key is None
    core.submit(Request("wide", replace(SPEC, width=128)))
    core.step()
    key = core.key
    assert isinstance(key, BatchKey)
    assert (key.model, key.channels, key.latent_height, key.latent_width) == ("tiny", 4, 8, 16)


def test_a_state_that_cannot_be_saved_fails_that_job_alone(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evicting a job whose state cannot be saved fails it with the reason; a job evicted
    beside it keeps its checkpoint and the job left running goes on to finish."""
    core = BatchCore(lambda _name: runtime)
    for job_id, seed in (("broken", 1), ("saved", 2), ("running", 3)):
        core.submit(Request(job_id, replace(SPEC, seed=seed, steps=4)))
    core.step()
    (broken,) = [job for job in core.running if job.job_id == "broken"]

    def refuse() -> None:
        raise RuntimeError("state refused (simulated)")

    monkeypatch.setattr(broken, "state", refuse)
    core.evict("broken")
    core.evict("saved")
    events = {e.job_id: e for e in core.step() if e.outcome is not Outcome.PROGRESS}
    assert events["broken"].outcome is Outcome.FAILED
    assert "checkpoint could not be saved" in (events["broken"].error or "")
    assert "state refused" in (events["broken"].error or "")
    assert events["saved"].outcome is Outcome.EVICTED and events["saved"].checkpoint
    assert [job.job_id for job in core.running] == ["running"]
    log = drain(core)
    assert log[-1][:2] == ("running", Outcome.FINISHED)
    assert not any(outcome is Outcome.FAILED for _, outcome, _ in log)


def oom_above(
    jobs_allowed: int, calls: list[int], monkeypatch: pytest.MonkeyPatch, *, times: int = 10**6
) -> None:
    """Make steps of more than ``jobs_allowed`` jobs run out of memory, ``times`` times;
    record the job count of each step tried in ``calls``."""
    real_step = batch_module.denoise_step
    left = [times]

    def step_or_oom(rt: ModelRuntime, jobs: list[ActiveJob]) -> dict[str, Exception]:
        calls.append(len(jobs))
        if len(jobs) > jobs_allowed and left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(rt, jobs)

    monkeypatch.setattr(batch_module, "denoise_step", step_or_oom)


KEY = BatchKey("tiny", 4, 8, 8)


def test_row_cap_probes_back_up_once_memory_is_back(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one out-of-memory split, every two steps that fill the lowered cap raise it
    by a job, back to the configured max; every job finishes."""
    calls: list[int] = []
    oom_above(2, calls, monkeypatch, times=1)
    core = BatchCore(lambda _name: runtime, BatchLimits(max_rows=8, probe_after_steps=2))
    for index in range(4):
        core.submit(Request(f"j{index}", replace(SPEC, seed=index, steps=5)))
    core.step()
    assert core.limits.rows_for(KEY) == 4
    log = drain(core)
    assert calls[:6] == [4, 2, 2, 3, 3, 4]
    assert KEY not in core.limits.rows_by_key and core.limits.rows_for(KEY) == 8
    assert sum(outcome is Outcome.FINISHED for _, outcome, _ in log) == 4
    assert not any(outcome is Outcome.FAILED for _, outcome, _ in log)


def test_a_probe_that_runs_out_of_memory_falls_back_and_waits_longer(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While memory stays short, a raised cap that runs out of memory falls back to the
    cap that worked, and each next probe waits twice as many full steps."""
    calls: list[int] = []
    oom_above(2, calls, monkeypatch)
    core = BatchCore(lambda _name: runtime, BatchLimits(max_rows=8, probe_after_steps=2))
    for index in range(5):
        core.submit(Request(f"j{index}", replace(SPEC, seed=index, steps=4)))
    log = drain(core)
    tries = [index for index, size in enumerate(calls) if size > 2]
    full_steps_between = [later - earlier - 1 for earlier, later in itertools.pairwise(tries)]
    assert full_steps_between[:2] == [2, 4]
    assert core.limits.rows_for(KEY) == 4
    assert sum(outcome is Outcome.FINISHED for _, outcome, _ in log) == 5
    assert not any(outcome is Outcome.FAILED for _, outcome, _ in log)


PAUSE_SPEC = replace(SPEC, steps=4)


def boundaries(core: BatchCore, count: int) -> list[EngineEvent]:
    events = []
    for _ in range(count):
        events += core.step()
    return events


def outcomes(events: list[EngineEvent]) -> list[tuple[str, Outcome]]:
    return [(e.job_id, e.outcome) for e in events]


def paused_after(runtime: ModelRuntime, steps_run: int) -> tuple[BatchCore, EngineEvent]:
    """A fresh core whose job "j" (PAUSE_SPEC) is paused after ``steps_run`` steps."""
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("j", PAUSE_SPEC))
    boundaries(core, steps_run)
    core.pause("j")
    (paused,) = [e for e in core.step() if e.outcome is Outcome.PAUSED]
    return core, paused


def test_a_job_paused_while_another_shape_runs_resumes_exactly(runtime: ModelRuntime) -> None:
    """A job paused after two steps takes no step while a wider job runs to its end, then,
    resumed from its kept state, finishes with the pixels of an uninterrupted run."""
    reference = pixels(run_core(runtime, Request("ref", PAUSE_SPEC)).images)
    core, paused = paused_after(runtime, 2)
    assert (paused.step, paused.total) == (2, 4)
    assert not core.running and list(core.paused) == ["j"]
    core.submit(Request("wide", replace(SPEC, width=128, seed=5)))
    meanwhile: list[EngineEvent] = []
    while not core.idle:
        meanwhile += core.step()
    assert ("wide", Outcome.FINISHED) in outcomes(meanwhile)
    assert all(e.job_id == "wide" for e in meanwhile)
    active = core.paused["j"].active
    assert active is not None and active.progress == (2, 4)
    assert core.idle and core.held and core.models_in_use == {"tiny"}
    core.resume("j")
    resumed: list[EngineEvent] = []
    while not core.idle:
        resumed += core.step()
    assert (resumed[0].job_id, resumed[0].outcome, resumed[0].step) == ("j", Outcome.STARTED, 2)
    assert outcomes(resumed)[-1] == ("j", Outcome.FINISHED)
    assert max_diff(pixels(resumed[-1].images), reference) == 0
    assert not core.held and core.models_in_use == frozenset()


def test_a_resumed_job_goes_ahead_of_a_job_waiting_before_it(runtime: ModelRuntime) -> None:
    """A job of another shape waits behind a job resumed after it was submitted, and
    starts only once the resumed job has finished."""
    core, _ = paused_after(runtime, 1)
    core.submit(Request("tall", replace(SPEC, height=128)))
    core.resume("j")
    log = drain(core)
    started = [job for job, outcome, _ in log if outcome is Outcome.STARTED]
    finished = [job for job, outcome, _ in log if outcome is Outcome.FINISHED]
    assert started == ["j", "tall"] and finished == ["j", "tall"]


def test_an_evicted_paused_job_checkpoint_resumes_exactly(runtime: ModelRuntime) -> None:
    """Evicting a paused job saves its kept state: the checkpoint, resumed on a fresh
    core, gives the pixels of an uninterrupted run."""
    reference = pixels(run_core(runtime, Request("ref", PAUSE_SPEC)).images)
    core, _ = paused_after(runtime, 2)
    core.evict("j")
    (evicted,) = core.step()
    assert (evicted.outcome, evicted.step, evicted.total) == (Outcome.EVICTED, 2, 4)
    assert evicted.checkpoint and not core.paused and core.idle
    resumed = run_core(runtime, Request("j", PAUSE_SPEC), evicted.checkpoint)
    assert max_diff(pixels(resumed.images), reference) == 0


def test_a_cancelled_paused_job_reports_its_progress(runtime: ModelRuntime) -> None:
    """Cancelling a paused job drops it with the steps it had done; its model is no
    longer in use."""
    core, _ = paused_after(runtime, 1)
    assert core.models_in_use == {"tiny"}
    core.cancel("j")
    (cancelled,) = core.step()
    assert (cancelled.outcome, cancelled.step, cancelled.total) == (Outcome.CANCELLED, 1, 4)
    assert not core.held and core.models_in_use == frozenset()


def test_pause_and_resume_apply_only_to_running_and_paused_jobs(runtime: ModelRuntime) -> None:
    """Pausing a waiting, an already paused or an unknown job emits nothing, and so
    does resuming a job that is not paused."""
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("a", PAUSE_SPEC))
    core.pause("a")
    core.pause("ghost")
    assert outcomes(core.step()) == [("a", Outcome.STARTED), ("a", Outcome.PROGRESS)]
    core.resume("a")
    assert outcomes(core.step()) == [("a", Outcome.PROGRESS)]
    core.pause("a")
    assert outcomes(core.step()) == [("a", Outcome.PAUSED)]
    core.pause("a")
    core.resume("ghost")
    assert not core.idle
    assert core.step() == []
    assert list(core.paused) == ["a"] and core.idle and core.held


def test_cancel_then_evict_win_over_a_pause_of_the_same_boundary(runtime: ModelRuntime) -> None:
    """A boundary with a pause and a cancel or eviction of the same job cancels it, else
    evicts it; it is not left paused."""
    core = BatchCore(lambda _name: runtime)
    for job_id, seed in (("c", 1), ("e", 2), ("p", 3)):
        core.submit(Request(job_id, replace(PAUSE_SPEC, seed=seed)))
    core.step()
    for job_id in ("c", "e", "p"):
        core.pause(job_id)
    core.cancel("c")
    core.evict("c")
    core.evict("e")
    events = sorted(outcomes(core.step()))
    assert events == [("c", Outcome.CANCELLED), ("e", Outcome.EVICTED), ("p", Outcome.PAUSED)]
    assert list(core.paused) == ["p"]


def test_device_runner_pauses_and_resumes_on_its_thread(runtime: ModelRuntime) -> None:
    """The runner's pause and resume commands reach the core: the job reports PAUSED,
    then, resumed, starts again from that step and finishes."""
    events: queue.SimpleQueue[EngineEvent] = queue.SimpleQueue()
    runner = DeviceRunner(BatchCore(lambda _name: runtime), events.put, batch_window_s=0)

    def next_of(outcome: Outcome) -> EngineEvent:
        while True:
            event = events.get(timeout=30)
            if event.outcome is outcome:
                return event

    runner.start()
    try:
        runner.submit(Request("j", replace(SPEC, steps=20)))
        next_of(Outcome.STARTED)
        runner.pause("j")
        paused = next_of(Outcome.PAUSED)
        assert 0 < paused.step < 20 and runner.core.held
        runner.resume("j")
        assert next_of(Outcome.STARTED).step == paused.step
        assert next_of(Outcome.FINISHED).step == 20
    finally:
        runner.stop()
