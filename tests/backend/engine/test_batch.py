"""The batching core: one shape at a time, row limits, out-of-memory splits lose no job."""

from __future__ import annotations

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
