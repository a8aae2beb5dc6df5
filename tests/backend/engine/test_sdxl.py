"""The own loop on an SDXL-architecture model: stock-exact pixels, exact resume, mixed
batches and img2img, with the tiny random SDXL pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.batch import BatchCore, Outcome
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import ActiveJob, Request, denoise_step, stock_generate
from backend.models import JobSpec
from tests.backend.engine.jobs import evict_after, max_diff, pixels, run_core, solo_latents
from tests.backend.engine.jobs import make_spec as shared_spec

SCHEDULERS = ["euler", "euler_a", "dpmpp_2m"]


def make_spec(**changes: Any) -> JobSpec:
    return shared_spec(**{"model": "tiny-sdxl", "steps": 3, **changes})


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_solo_job_matches_stock_sdxl_pipeline(sdxl_runtime: ModelRuntime, scheduler: str) -> None:
    """A guided SDXL job alone gives exactly StableDiffusionXLPipeline's pixels."""
    spec = make_spec(scheduler=scheduler, negative_prompt="blurry")
    event = run_core(sdxl_runtime, Request("j", spec))
    assert event.outcome is Outcome.FINISHED
    stock = pixels(stock_generate(sdxl_runtime, spec))
    assert max_diff(pixels(event.images), stock) == 0


def test_unguided_and_empty_negative_match_stock(sdxl_runtime: ModelRuntime) -> None:
    """Guidance 1 (no unconditional rows) and guidance without a negative prompt (SDXL's
    zeroed negative embeddings) both match the stock pipeline exactly, at a non-square size."""
    for spec in (make_spec(guidance=1.0, n=1), make_spec(width=96, height=64, seed=3)):
        event = run_core(sdxl_runtime, Request("j", spec))
        assert event.images[0].size == (spec.width, spec.height)
        assert max_diff(pixels(event.images), pixels(stock_generate(sdxl_runtime, spec))) == 0


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])
def test_resume_after_every_step_is_exact(sdxl_runtime: ModelRuntime, scheduler: str) -> None:
    """An SDXL job evicted after any step k and resumed from bytes in a fresh core ends
    with identical pixels (euler_a carries generator state, dpm++ 2m a model-output
    history)."""
    spec = make_spec(scheduler=scheduler, steps=4, n=1)
    reference = pixels(run_core(sdxl_runtime, Request("ref", spec)).images)
    for k in range(1, 4):
        evicted = evict_after(sdxl_runtime, spec, k)
        assert evicted.step == k and evicted.checkpoint is not None
        resumed = run_core(sdxl_runtime, Request("j", spec), evicted.checkpoint)
        assert max_diff(pixels(resumed.images), reference) == 0, f"resume after step {k}"


def test_mixed_batch_rows_match_their_solo_runs(sdxl_runtime: ModelRuntime) -> None:
    """SDXL jobs differing in prompt, seed, guidance and scheduler share each UNet call
    (with their own pooled embeddings and time ids) and each ends within 1e-5 of its solo
    latents, relative to their largest magnitude (float32 rounding of another batch layout)."""
    requests = [
        Request("a", make_spec()),
        Request("b", make_spec(prompt="a red fox", seed=99, guidance=3.0, scheduler="euler_a")),
        Request("c", make_spec(prompt="snowy peak", seed=5, guidance=1.0, n=1)),
    ]
    jobs = [ActiveJob(request, sdxl_runtime) for request in requests]
    for job in jobs:
        job.prepare()
    while not all(job.done for job in jobs):
        assert denoise_step(sdxl_runtime, jobs) == {}
    assert [job.rows for job in jobs] == [4, 4, 1]
    for job, request in zip(jobs, requests, strict=True):
        solo = solo_latents(sdxl_runtime, request)
        assert job.latents is not None
        scale = max(1.0, float(solo.abs().max()))
        error = float((job.latents - solo).abs().max())
        assert error <= 1e-5 * scale, (request.job_id, error, scale)


def stock_img2img(runtime: ModelRuntime, spec: JobSpec, source: Image.Image) -> list[np.ndarray]:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    stock_pipe = StableDiffusionXLImg2ImgPipeline(**runtime.pipe.components)
    stock_pipe.set_progress_bar_config(disable=True)
    seeds = range(spec.seed, spec.seed + spec.n)
    with torch.inference_mode():
        images = stock_pipe(
            prompt=spec.prompt,
            image=source,
            strength=0.5,
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance,
            num_images_per_prompt=spec.n,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        ).images
    return pixels(images)


def test_img2img_variation_matches_stock_sdxl_img2img(sdxl_runtime: ModelRuntime) -> None:
    """An SDXL variation (img2img at strength 0.5) alone gives exactly the pixels of
    StableDiffusionXLImg2ImgPipeline; sharing a batch with a text job it runs only half of
    its steps and stays within one pixel level of them (float32 rounding of the larger
    batch can move a value across a rounding boundary)."""
    source = Image.new("RGB", (64, 64), (200, 80, 20))
    spec = make_spec(steps=4, seed=3)
    stock = stock_img2img(sdxl_runtime, spec, source)
    solo = run_core(sdxl_runtime, Request("var", spec, init_image=source, strength=0.5))
    assert max_diff(pixels(solo.images), stock) == 0
    core = BatchCore(lambda _name: sdxl_runtime)
    core.submit(Request("txt", make_spec(steps=4)))
    core.submit(Request("var", spec, init_image=source, strength=0.5))
    started = {e.job_id: e.total for e in core.step() if e.outcome is Outcome.STARTED}
    assert started == {"txt": 4, "var": 2}
    done = {}
    while core.running:
        done.update({e.job_id: e for e in core.step() if e.outcome is Outcome.FINISHED})
    assert set(done) == {"txt", "var"}
    assert max_diff(pixels(done["var"].images), stock) <= 1
