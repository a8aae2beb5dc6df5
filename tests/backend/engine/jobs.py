"""Job specs and a one-job engine run that the engine's tests share."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from backend.engine.batch import BatchCore, Outcome
from backend.engine.runtime import ModelRuntime
from backend.engine.types import Request
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
