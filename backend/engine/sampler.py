"""The denoising loop, driven over a pipeline's components, one step at a time.

Each job owns its scheduler instance, one CPU ``torch.Generator`` per sample, its
latents and its step index. :func:`denoise_step` advances any set of jobs of one
model and latent shape by one step with a single UNet forward: rows may differ in
prompt, seed, guidance, scheduler, step count and current step. A job running
alone goes through exactly the operations of the stock diffusers pipeline, in the
same order and batch layout, so its pixels match the stock call bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from backend.engine.runtime import Conditioning, ModelRuntime
from backend.engine.schedulers import make_scheduler
from backend.engine.source import check_source_image
from backend.engine.state import DenoiseState, restore_scheduler, scheduler_state
from backend.engine.types import Request
from backend.errors import CheckpointError, JobError
from backend.models import SEED_MAX, JobSpec


def sample_seeds(spec: JobSpec) -> list[int]:
    """Seed of each sample: the job's seed, then the next ones (wrapping at 2^32)."""
    return [(spec.seed + index) % (SEED_MAX + 1) for index in range(spec.n)]


class ActiveJob:
    """One job's denoising state on a device; created fresh or from a checkpoint."""

    def __init__(self, request: Request, runtime: ModelRuntime) -> None:
        spec = request.spec
        self.request = request
        self.runtime = runtime
        self.job_id = request.job_id
        self.cfg = runtime.uses_guidance(spec)
        self.guidance = float(spec.guidance or 0.0)
        self.n = spec.n
        self.rows = spec.n * (2 if self.cfg else 1)
        self.key = (runtime.name, *runtime.latent_shape(spec))
        assert spec.scheduler is not None
        self.scheduler = make_scheduler(spec.scheduler, runtime.scheduler_config)
        self.scheduler.set_timesteps(request.steps, device=runtime.device)
        self.timesteps: torch.Tensor = self.scheduler.timesteps
        self.start = 0
        self.step = 0
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in sample_seeds(spec)]
        self.latents: torch.Tensor | None = None
        self.cond: Conditioning | None = None
        self._step_kwargs = _step_kwargs(self.scheduler, self.generators)

    @property
    def total(self) -> int:
        """Timesteps in the job's schedule, counting those an img2img job skips."""
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        """Whether every step of the schedule has run."""
        return self.step >= self.total

    @property
    def progress(self) -> tuple[int, int]:
        """Steps done and steps in all, counted from the job's own first step."""
        return self.step - self.start, self.total - self.start

    def prepare(self) -> None:
        """Initial latents (noise, or the noised source image) and the conditioning."""
        runtime, spec = self.runtime, self.request.spec
        if self.request.strength is not None:
            self._prepare_img2img()
        else:
            from diffusers.utils.torch_utils import randn_tensor

            shape = (spec.n, *runtime.latent_shape(spec))
            noise = randn_tensor(
                shape, generator=self.generators, device=runtime.device, dtype=runtime.dtype
            )
            self.latents = noise * self.scheduler.init_noise_sigma
        self.cond = runtime.encode(spec)

    def _prepare_img2img(self) -> None:
        from diffusers.utils.torch_utils import randn_tensor

        runtime, request = self.runtime, self.request
        assert request.init_image is not None
        assert request.strength is not None
        steps = request.steps
        kept = min(int(steps * request.strength), steps)
        self.start = max(steps - kept, 0) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(self.start)
        self.step = self.start
        if self.done:
            raise JobError(
                f"strength {request.strength} leaves no step to run at {steps} steps",
                request.job_id,
            )
        check_source_image(request.init_image)
        try:
            clean = runtime.encode_image(request.init_image, request.spec, self.generators)
        except (OSError, ValueError) as exc:
            raise JobError(f"source image unusable: {exc}", request.job_id) from exc
        noise = randn_tensor(
            clean.shape, generator=self.generators, device=runtime.device, dtype=runtime.dtype
        )
        start_t = self.timesteps[self.start : self.start + 1].repeat(self.n)
        self.latents = self.scheduler.add_noise(clean, noise, start_t)

    def ensure_conditioning(self) -> None:
        """Encode the prompt if this job has no conditioning yet (after a resume)."""
        if self.cond is None:
            self.cond = self.runtime.encode(self.request.spec)

    def state(self) -> DenoiseState:
        """The resumable state; prompt embeddings are left out (recomputed)."""
        assert self.latents is not None
        return DenoiseState(
            latents=self.latents,
            step=self.step,
            scheduler_state=scheduler_state(self.scheduler),
            generator_states=[g.get_state() for g in self.generators],
        )

    def restore(self, state: DenoiseState) -> None:
        """Continue from a saved state instead of :meth:`prepare`.

        Raises :class:`CheckpointError` when the state cannot belong to this job (other
        sample count, latent shape or schedule), so it never reaches a shared step.
        """
        job_id = self.request.job_id
        if len(state.generator_states) != self.n:
            raise CheckpointError(
                f"checkpoint has {len(state.generator_states)} samples, job has {self.n}", job_id
            )
        shape = (self.n, *self.key[1:])
        if tuple(state.latents.shape) != shape:
            raise CheckpointError(
                f"checkpoint latents {tuple(state.latents.shape)}, job needs {shape}", job_id
            )
        fresh = self.timesteps
        restore_scheduler(self.scheduler, state.scheduler_state)
        self.timesteps = self.scheduler.timesteps
        if not _same_schedule(fresh, self.timesteps):
            raise CheckpointError("checkpoint schedule differs from the job's", job_id)
        for generator, saved in zip(self.generators, state.generator_states, strict=True):
            generator.set_state(saved)
        self.latents = state.latents.to(self.runtime.device, self.runtime.dtype)
        if self.request.strength is not None:
            kept = min(int(self.request.steps * self.request.strength), self.request.steps)
            self.start = max(self.request.steps - kept, 0) * self.scheduler.order
        if not self.start <= state.step < self.total:
            raise CheckpointError(
                f"checkpoint step {state.step} is outside {self.start}..{self.total - 1}", job_id
            )
        self.step = state.step

    def unet_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This job's UNet rows and their timestep, as the stock pipeline builds them."""
        assert self.latents is not None
        t = self.timesteps[self.step]
        rows = torch.cat([self.latents] * 2) if self.cfg else self.latents
        rows = self.scheduler.scale_model_input(rows, t)
        return rows, t

    def advance(self, noise_pred: torch.Tensor, t: torch.Tensor) -> None:
        """Apply guidance and this job's scheduler step to its slice of the UNet output."""
        assert self.latents is not None
        if self.cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + self.guidance * (text - uncond)
        self.latents = self.scheduler.step(
            noise_pred, t, self.latents, **self._step_kwargs, return_dict=False
        )[0]
        self.step += 1
        if not bool(torch.isfinite(self.latents).all()):
            raise JobError(
                f"non-finite latents (NaN or inf) after step {self.step}", self.request.job_id
            )


def _same_schedule(fresh: torch.Tensor, restored: Any) -> bool:
    if not isinstance(restored, torch.Tensor) or restored.shape != fresh.shape:
        return False
    return bool(torch.equal(fresh.cpu(), restored.cpu().to(fresh.dtype)))


def _step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


def stock_generate(runtime: ModelRuntime, spec: JobSpec) -> list[Any]:
    """The same job through the stock diffusers pipeline call: the reference the own
    loop is compared with (tests for pixels, the engine benchmark for speed)."""
    pipe = runtime.pipe
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(spec.scheduler or "euler", original.config)
    try:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in sample_seeds(spec)]
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
                output_type="pil",
            )
    finally:
        pipe.scheduler = original
    images: list[Any] = result.images
    return images


def denoise_step(runtime: ModelRuntime, jobs: list[ActiveJob]) -> dict[str, Exception]:
    """Advance every job by one step with one UNet forward; returns per-job failures.

    All jobs must share ``runtime`` and latent shape. A job whose step fails (NaN) is
    reported in the result and must be dropped by the caller; the others advance.
    """
    inputs, stamps, embeds, added, conds = [], [], [], [], []
    for job in jobs:
        job.ensure_conditioning()
        assert job.cond is not None
        rows, t = job.unet_input()
        inputs.append(rows)
        stamps.append(t.reshape(1).to(torch.float32).expand(job.rows))
        embeds.append(job.cond.embeds)
        added.append(job.cond.added)
        if job.cond.timestep_cond is not None:
            conds.append(job.cond.timestep_cond)
    added_kwargs = {key: torch.cat([a[key] for a in added]) for key in added[0]} or None
    with torch.inference_mode():
        noise_pred = runtime.unet(
            torch.cat(inputs),
            torch.cat(stamps).to(runtime.device),
            encoder_hidden_states=torch.cat(embeds),
            timestep_cond=torch.cat(conds) if conds else None,
            added_cond_kwargs=added_kwargs,
            return_dict=False,
        )[0]
        failures: dict[str, Exception] = {}
        offset = 0
        for job in jobs:
            part = noise_pred[offset : offset + job.rows]
            offset += job.rows
            t = job.timesteps[job.step]
            try:
                job.advance(part, t)
            except JobError as exc:
                failures[job.job_id] = exc
    return failures
