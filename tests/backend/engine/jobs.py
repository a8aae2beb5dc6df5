"""Job specs, engine runs and pixel comparisons that the engine's tests share."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from backend.engine.batch import BatchCore, Outcome
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import ActiveJob, denoise_step
from backend.engine.types import EngineEvent, Request
from backend.models import JobSpec


def make_spec(model: str = "tiny", steps: int = 5, **changes: Any) -> JobSpec:
    """A guided two-sample 64 px job of ``model``, changed by ``changes``."""
    base = JobSpec(
        prompt="a lighthouse at dusk",
        seed=7,
        width=64,
        height=64,
        steps=steps,
        guidance=7.5,
        model=model,
        n=2,
        scheduler="euler",
    )
    return replace(base, **changes)


def run_core(runtime: ModelRuntime, request: Request, checkpoint: bytes | None = None) -> Any:
    """Run one request alone to its final event (finished or failed)."""
    core = BatchCore(lambda _name: runtime)
    core.submit(request, checkpoint)
    while True:
        for event in core.step():
            if event.outcome in (Outcome.FINISHED, Outcome.FAILED):
                return event


def evict_after(runtime: ModelRuntime, spec: JobSpec, steps_run: int) -> EngineEvent:
    """The EVICTED event of a job taken off a fresh core after ``steps_run`` steps."""
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("j", spec))
    for _ in range(steps_run):
        core.step()
    core.evict("j")
    (evicted,) = [e for e in core.step() if e.outcome is Outcome.EVICTED]
    return evicted


def solo_latents(runtime: ModelRuntime, request: Request) -> torch.Tensor:
    """The final latents of ``request`` run alone, step by step."""
    job = ActiveJob(request, runtime)
    job.prepare()
    while not job.done:
        assert denoise_step(runtime, [job]) == {}
    assert job.latents is not None
    return job.latents


def pixels(images: Any) -> list[np.ndarray]:
    """Each image as an array."""
    return [np.asarray(image) for image in images]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    """The largest per-channel difference between two lists of images."""
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b, strict=True))
