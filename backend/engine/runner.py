"""Runs one job on one device: text to a list of sample images.

Blocking; called on the device's own thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from backend.engine.registry import ModelRegistry, make_scheduler
from backend.errors import BackendError
from backend.models import SEED_MAX, JobSpec

StepCallback = Callable[[int, int], None]


class JobCancelledError(BackendError):
    """The job was asked to stop and did, at a step boundary."""


def sample_seeds(spec: JobSpec) -> list[int]:
    """Seed of each sample: the job's seed, then the next ones (wrapping at 2^32)."""
    return [(spec.seed + index) % (SEED_MAX + 1) for index in range(spec.n)]


class Engine:
    """Turns a resolved spec into images with the model's pipeline."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def generate(
        self,
        spec: JobSpec,
        on_step: StepCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Image.Image]:
        """Samples for ``spec`` (all defaults resolved); raises JobCancelledError on stop."""
        if spec.model is None or spec.steps is None or spec.scheduler is None:
            raise ValueError("generate() needs a spec resolved by the model catalog")
        pipe = self.registry.pipeline(spec.model)
        pipe.scheduler = make_scheduler(spec.scheduler, pipe.scheduler.config)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in sample_seeds(spec)]
        stopped = False

        def step_end(pipeline: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> Any:
            nonlocal stopped
            if on_step is not None:
                on_step(index + 1, spec.steps or 0)
            if should_stop is not None and should_stop():
                stopped = True
                pipeline._interrupt = True
            return kwargs

        with torch.inference_mode():
            result = pipe(
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt or None,
                width=spec.width,
                height=spec.height,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance,
                num_images_per_prompt=spec.n,
                generator=generators,
                callback_on_step_end=step_end,
                output_type="pil",
            )
        if stopped:
            raise JobCancelledError("cancelled")
        images: list[Image.Image] = list(result.images)
        return images
