"""The batching core: one shape at a time, row limits, out-of-memory splits lose no job."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from backend.engine import batch as batch_module
from backend.engine.batch import BatchCore, BatchKey, BatchLimits, Outcome
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import ActiveJob, Request
from backend.models import JobSpec

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
