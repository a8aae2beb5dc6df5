"""Scoring a shapes pipeline: generate for known prompts, read each image back, count.

The held-out prompts name colour/shape/background combinations training never drew;
the seen prompts are a fixed sample of the ones it did. Both run with the model's
catalog defaults (steps, guidance, scheduler, native size), as users get them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from backend.shapes.draw import ShapeSpec, evaluation_specs
from backend.shapes.score import score
from backend.shapes.vocab import HELD_OUT, combinations

SEEN_PROMPTS = 25
BATCH = 50


@dataclass(frozen=True, slots=True)
class Sampling:
    """How images are generated for scoring: the model's defaults unless told otherwise."""

    steps: int
    guidance: float
    size_px: int = 32

    @classmethod
    def builtin_defaults(cls) -> Sampling:
        """The built-in shapes model's catalog defaults."""
        from config.settings import EngineSettings

        model = EngineSettings().models["shapes"]
        side = int((model.pixel_budget or 32 * 32) ** 0.5)
        return cls(model.default_steps, model.default_guidance, side)


@dataclass(frozen=True, slots=True)
class Accuracy:
    """The share of samples whose background, shape colour and shape read back right."""

    samples: int
    background: float
    color: float
    shape: float

    @property
    def worst(self) -> float:
        """The lowest of the three."""
        return min(self.background, self.color, self.shape)

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON values, shares rounded to 0.001."""
        return {
            "samples": self.samples,
            "background": round(self.background, 3),
            "color": round(self.color, 3),
            "shape": round(self.shape, 3),
        }


def seen_specs(count: int = SEEN_PROMPTS) -> list[ShapeSpec]:
    """A fixed, evenly spread sample of the combinations training drew."""
    trained = [combination for combination in combinations() if combination not in HELD_OUT]
    stride = max(1, len(trained) // count)
    return [ShapeSpec(*combination) for combination in trained[::stride][:count]]


def accuracy(specs: Sequence[ShapeSpec], images: Sequence[Image.Image]) -> Accuracy:
    """How many of ``images`` show what ``specs`` asked for, attribute by attribute."""
    right = {"background": 0, "color": 0, "shape": 0}
    for spec, image in zip(specs, images, strict=True):
        read = score(image)
        right["background"] += read.background == spec.background
        right["color"] += read.color == spec.color
        right["shape"] += read.shape == spec.shape
    count = max(len(specs), 1)
    return Accuracy(len(specs), *(right[name] / count for name in ("background", "color", "shape")))


def load_pipeline(folder: Path) -> Any:
    """The pipeline in ``folder``, in float32 on the CPU, progress bars off."""
    from backend.engine.hardware import quiet_model_libraries, untyped_diffusers

    diffusers = untyped_diffusers()

    quiet_model_libraries()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling
) -> list[Image.Image]:
    """One image per (prompt, seed), each with its own generator, in batches."""
    images: list[Image.Image] = []
    for start in range(0, len(prompts), BATCH):
        chunk = slice(start, start + BATCH)
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
        result = pipe(
            prompt=list(prompts[chunk]),
            num_inference_steps=sampling.steps,
            guidance_scale=sampling.guidance,
            height=sampling.size_px,
            width=sampling.size_px,
            generator=generators,
        )
        images.extend(result.images)
    return images


def evaluate(
    folder: Path,
    seeds_per_prompt: int = 4,
    sampling: Sampling | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Accuracy]:
    """Accuracy on the held-out prompts and on seen ones, ``seeds_per_prompt`` each."""
    sampling = sampling or Sampling.builtin_defaults()
    pipe = load_pipeline(folder)
    groups = {"held_out": evaluation_specs(), "seen": seen_specs()}
    results: dict[str, Accuracy] = {}
    for done, (name, specs) in enumerate(groups.items(), start=1):
        repeated = [spec for spec in specs for _ in range(seeds_per_prompt)]
        seeds = [index % seeds_per_prompt for index in range(len(repeated))]
        with torch.inference_mode():
            images = generate(pipe, [spec.caption() for spec in repeated], seeds, sampling)
        results[name] = accuracy(repeated, images)
        if progress is not None:
            progress(done, len(groups))
    return results
