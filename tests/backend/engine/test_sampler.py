"""The own denoising loop: stock-exact pixels, exact resume, mixed batches, failures alone."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, MutableMapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine import state as checkpoints
from backend.engine.batch import BatchCore, Outcome
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import ActiveJob, Request, denoise_step, stock_generate
from backend.engine.source import load_source_image
from backend.errors import CheckpointError, JobError
from backend.models import SCHEDULER_NAMES, JobSpec
from tests.backend.engine.jobs import (
    evict_after,
    make_spec,
    max_diff,
    pixels,
    run_core,
    solo_latents,
)

EXACT_SCHEDULERS = ["euler", "euler_a", "dpmpp_2m", "lcm"]


def stock_images(runtime: ModelRuntime, spec: JobSpec) -> list[np.ndarray]:
    return [np.asarray(image) for image in stock_generate(runtime, spec)]


@pytest.mark.parametrize("scheduler", EXACT_SCHEDULERS)
def test_solo_job_matches_stock_pipeline(runtime: ModelRuntime, scheduler: str) -> None:
    """A job alone on the device gives exactly the stock pipeline's pixels."""
    spec = make_spec(scheduler=scheduler, negative_prompt="blurry")
    event = run_core(runtime, Request("j", spec))
    assert event.outcome is Outcome.FINISHED
    assert max_diff(pixels(event.images), stock_images(runtime, spec)) == 0


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_resume_after_every_step_is_exact(runtime: ModelRuntime, scheduler: str) -> None:
    """With every scheduler the prompt offers, a job evicted after any step k and resumed
    from bytes ends with identical pixels."""
    spec = make_spec(scheduler=scheduler, steps=4)
    reference = pixels(run_core(runtime, Request("ref", spec)).images)
    for k in range(1, spec.steps or 0):
        evicted = evict_after(runtime, spec, k)
        assert evicted.step == k and evicted.checkpoint is not None
        resumed = run_core(runtime, Request("j", spec), evicted.checkpoint)
        assert max_diff(pixels(resumed.images), reference) == 0, f"resume after step {k}"


def test_mixed_batch_rows_match_their_solo_runs(runtime: ModelRuntime) -> None:
    """Jobs differing in prompt, seed, guidance, scheduler, steps and start share one
    forward per step, and each ends within 1e-5 of its solo latents (relative to the
    latents' largest magnitude: the tiny model's random weights leave latents near 20,
    where float32 rounding from another batch layout alone is about 1e-6 per step)."""
    requests = [
        Request("a", make_spec()),
        Request("b", make_spec(prompt="a red fox", seed=99, guidance=3.0, scheduler="euler_a")),
        Request("c", make_spec(prompt="snowy peak", seed=5, guidance=1.0, steps=3, n=1)),
        Request("d", make_spec(scheduler="dpmpp_2m", steps=7, negative_prompt="text")),
        Request("e", make_spec(scheduler="lcm", steps=4, n=3)),
    ]
    jobs = [ActiveJob(request, runtime) for request in requests]
    for job in jobs:
        job.prepare()
    finished: dict[str, torch.Tensor] = {}
    running = jobs[:2]  # the others join after two steps, mid-flight
    pending = jobs[2:]
    boundary = 0
    while running or pending:
        if boundary == 2:
            running, pending = running + pending, []
        assert denoise_step(runtime, running) == {}
        boundary += 1
        for job in [j for j in running if j.done]:
            assert job.latents is not None
            finished[job.job_id] = job.latents
        running = [j for j in running if not j.done]
    assert jobs[2].rows == 1 and jobs[0].rows == 4  # unguided rows skip the uncond half
    for request in requests:
        solo = solo_latents(runtime, request)
        scale = max(1.0, float(solo.abs().max()))
        error = float((finished[request.job_id] - solo).abs().max())
        assert error <= 1e-5 * scale, (request.job_id, error, scale)


def test_non_finite_latents_fail_that_job_only(runtime: ModelRuntime) -> None:
    """A job whose latents turn NaN fails with a reason; its batch-mate advances."""
    bad, good = (
        ActiveJob(Request("bad", make_spec()), runtime),
        ActiveJob(Request("good", make_spec(seed=1)), runtime),
    )
    bad.prepare()
    good.prepare()
    assert bad.latents is not None
    bad.latents[0, 0, 0, 0] = float("nan")
    failures = denoise_step(runtime, [bad, good])
    assert list(failures) == ["bad"] and "non-finite" in str(failures["bad"])
    assert good.step == 1


def test_checkpoint_is_small_and_safe(runtime: ModelRuntime) -> None:
    """A dpm++ 2m checkpoint holds latents, history and generator states; it loads
    without pickle and stays near the latent size per sample."""
    job = ActiveJob(Request("j", make_spec(scheduler="dpmpp_2m", n=2)), runtime)
    job.prepare()
    denoise_step(runtime, [job])
    denoise_step(runtime, [job])
    blob = checkpoints.dumps(job.state())
    latent_bytes = job.latents.numel() * 4 if job.latents is not None else 0
    # Latents plus two model outputs of the same size, plus generator state.
    assert len(blob) < 3 * latent_bytes + 2 * 6000 + 4096
    restored = checkpoints.loads(blob)
    assert restored.step == 2 and len(restored.generator_states) == 2
    with pytest.raises(CheckpointError):
        checkpoints.loads(b"not a checkpoint")


def test_img2img_variation_shares_batch_with_txt2img(runtime: ModelRuntime) -> None:
    """A variation (img2img from a sample) and a text job of the same shape run in one
    batch; the variation runs only its strength's share of the steps."""
    source = Image.new("RGB", (64, 64), (200, 80, 20))
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("txt", make_spec(steps=4)))
    core.submit(Request("var", make_spec(steps=4, seed=3), init_image=source, strength=0.5))
    started = [e for e in core.step() if e.outcome is Outcome.STARTED]
    assert {e.job_id for e in started} == {"txt", "var"}
    assert {e.job_id: e.total for e in started} == {"txt": 4, "var": 2}
    done = {}
    while core.running:
        done.update({e.job_id: e for e in core.step() if e.outcome is Outcome.FINISHED})
    assert set(done) == {"txt", "var"}
    assert all(image.size == (64, 64) for image in done["var"].images)


def test_source_image_bytes_are_checked() -> None:
    """Bytes that are not an image, or an image over the pixel limit, are refused."""
    with pytest.raises(JobError, match="not a readable image"):
        load_source_image(b"GIF89a broken")
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, format="PNG")
    with pytest.raises(JobError, match="exceeds"):
        load_source_image(buffer.getvalue(), max_pixels=300 * 199)
    assert load_source_image(buffer.getvalue()).size == (300, 200)


def test_unusable_source_image_fails_alone(runtime: ModelRuntime) -> None:
    """An img2img source that cannot be used fails its job; the other job runs."""
    broken = Image.new("RGB", (0, 0))
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("bad", make_spec(), init_image=broken, strength=0.5))
    core.submit(Request("ok", make_spec(steps=2)))
    outcomes = {}
    while not core.idle:
        outcomes.update({e.job_id: e for e in core.step() if e.outcome.value != "progress"})
    assert outcomes["bad"].outcome is Outcome.FAILED and outcomes["bad"].error
    assert outcomes["ok"].outcome is Outcome.FINISHED


def test_decoded_previews_every_n_steps(runtime: ModelRuntime) -> None:
    """With decoded previews every 2 steps, steps 2 and 4 carry a decoded WebP through the
    configured decoder, the others the cheap preview; a 64 px image's previews are all
    scaled up to 256 px so they show in a chat message."""
    from backend.engine.preview import PreviewMaker

    decoded_at: list[int] = []

    class Counting(PreviewMaker):
        def _decoded(self, job: ActiveJob) -> Image.Image:
            decoded_at.append(job.progress[0])
            return super()._decoded(job)

    core = BatchCore(lambda _name: runtime, previews=Counting(1, 2, None, 512))
    core.submit(Request("j", make_spec(steps=5, n=1)))
    previews = {}
    while not core.idle:
        for event in core.step():
            if event.outcome is Outcome.PROGRESS:
                previews[event.step] = event.preview
    assert set(previews) == {1, 2, 3, 4}
    sizes = {}
    for step, data in previews.items():
        assert data is not None
        with Image.open(io.BytesIO(data)) as image:
            sizes[step] = image.size
    assert sizes == {1: (256, 256), 2: (256, 256), 3: (256, 256), 4: (256, 256)}
    assert decoded_at == [2, 4]


def evicted_checkpoint(runtime: ModelRuntime, spec: JobSpec, steps_run: int) -> bytes:
    evicted = evict_after(runtime, spec, steps_run)
    assert evicted.checkpoint is not None
    return evicted.checkpoint


def malformed_meta(blob: bytes) -> bytes:
    """The same tensors, with a document that lacks the scheduler state."""
    from safetensors.torch import load, save

    tensors = load(blob)
    meta = json.loads(bytes(tensors["__meta__"].tolist()))
    del meta["scheduler"]
    document = bytearray(json.dumps(meta).encode())
    tensors["__meta__"] = torch.frombuffer(document, dtype=torch.uint8)
    return bytes(save(tensors))


BAD_CHECKPOINTS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "garbage": lambda good, other: b"\x00\xffnot a checkpoint at all",
    "truncated": lambda good, other: good[: len(good) // 2],
    "malformed": lambda good, other: malformed_meta(good),
    "other_shape": lambda good, other: other,
}
QUARANTINE_SPEC = make_spec(steps=3, n=1)
NEIGHBOUR_SPEC = make_spec(steps=2, n=1, seed=11, prompt="a red fox")


def run_pair(runtime: ModelRuntime, checkpoint: bytes | None) -> tuple[BatchCore, dict[str, Any]]:
    """The job "bad" (from ``checkpoint``) and "ok" submitted together; their events."""
    core = BatchCore(lambda _name: runtime)
    core.submit(Request("bad", QUARANTINE_SPEC), checkpoint)
    core.submit(Request("ok", NEIGHBOUR_SPEC))
    events: dict[str, list[Any]] = {"bad": [], "ok": []}
    for _ in range(10):
        for event in core.step():
            events[event.job_id].append(event)
    return core, events


@pytest.fixture(scope="module")
def quarantine_material(runtime: ModelRuntime) -> dict[str, Any]:
    """A good checkpoint, one of another shape, and both jobs' pixels from a fresh run."""
    _, fresh = run_pair(runtime, None)
    return {
        "good": evicted_checkpoint(runtime, QUARANTINE_SPEC, 1),
        "other": evicted_checkpoint(runtime, replace(QUARANTINE_SPEC, width=128), 1),
        "fresh": {job: pixels(events[-1].images) for job, events in fresh.items()},
    }


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_unusable_checkpoint_is_quarantined_and_the_job_starts_over(
    runtime: ModelRuntime,
    kind: str,
    quarantine_material: dict[str, Any],
    logs: list[MutableMapping[str, Any]],
) -> None:
    """A checkpoint that cannot be loaded (garbage, truncated, malformed, another job's
    shape) is dropped with a logged reason; that job starts over from step 0 to the
    pixels of a fresh run, the job beside it is unaffected, and the device goes on."""
    material = quarantine_material
    core, events = run_pair(runtime, BAD_CHECKPOINTS[kind](material["good"], material["other"]))
    started = next(e for e in events["bad"] if e.outcome is Outcome.STARTED)
    assert started.step == 0 and started.quarantined
    for job in ("bad", "ok"):
        assert events[job][-1].outcome is Outcome.FINISHED
        assert max_diff(pixels(events[job][-1].images), material["fresh"][job]) == 0
    (entry,) = [e for e in logs if e["event"] == "checkpoint_quarantined"]
    assert entry["job_id"] == "bad" and entry["reason"] == started.quarantined
    core.submit(Request("later", NEIGHBOUR_SPEC))
    later = [e for _ in range(5) for e in core.step() if e.outcome is Outcome.FINISHED]
    assert [e.job_id for e in later] == ["later"]
