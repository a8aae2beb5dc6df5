"""Training the built-in shapes model from scratch, on procedurally drawn shapes.

Two stages, each with a fixed number of steps so that a seed gives the same weights
on the same machine: an autoencoder (a small ``AutoencoderKL``, 4x latent scale),
then a UNet with a CLIP text encoder trained jointly on latents encoded once, with
empty captions one time in ten so that classifier-free guidance works. The result is
a standard Stable Diffusion folder (``save_pretrained``) that the stock
``StableDiffusionPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn.functional as F

from backend.engine.hardware import untyped_diffusers
from backend.engine.tiny import MAX_PROMPT_TOKENS, SD15_SCHEDULER, clip_text_encoder
from backend.engine.tokenizer import train_bpe, write_clip_tokenizer
from backend.shapes.draw import training_samples
from backend.shapes.shipped import BUILDER, write_marker
from backend.shapes.vocab import (
    BACKGROUNDS,
    POSITION_PHRASE,
    SHAPE_COLORS,
    SHAPES,
    TEMPLATES,
    Position,
    Size,
)

log = structlog.get_logger(__name__)

IMAGE_PX = 32
TOKENIZER_VOCAB = 600
CFG_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.999
GRADIENT_CLIP = 1.0
MARKER = {"family": "sd15", "builder": BUILDER, "format": 1}
"""What every trained folder's marker says of it, beside its training report."""

# Training uses SD1.5's noise schedule (SD15_SCHEDULER); sampling the same one with Euler.

Progress = Callable[[str, int, int, float], None]
"""Called as ``progress(stage, step, total, loss)`` after every training step."""


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """Everything that decides the weights; the same plan gives the same bytes."""

    seed: int = 0
    unet_steps: int = 4400
    vae_steps: int = 1200
    samples: int = 16384
    unet_batch: int = 64
    vae_batch: int = 32
    unet_lr: float = 1e-3
    vae_lr: float = 1e-3
    # Torch CPU threads: part of the plan because the thread count can change the order
    # of float sums, hence the bytes. Two make the UNet steps about 1.5x faster than one
    # on an otherwise idle 2-core machine (they stall when other work takes a core).
    threads: int = 2

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain JSON values."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class TrainReport:
    """What a training run took, stage by stage, and where it wrote the model."""

    plan: TrainPlan
    stage_s: dict[str, float]
    final_loss: dict[str, float]
    parameters: dict[str, int]
    threads: int

    @property
    def total_s(self) -> float:
        """Wall time of all stages together."""
        return sum(self.stage_s.values())

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON values (times rounded to 0.1 s)."""
        return {
            "plan": self.plan.as_dict(),
            "stage_s": {stage: round(seconds, 1) for stage, seconds in self.stage_s.items()},
            "total_s": round(self.total_s, 1),
            "final_loss": {stage: round(loss, 5) for stage, loss in self.final_loss.items()},
            "parameters": self.parameters,
            "threads": self.threads,
        }


def caption_corpus() -> list[str]:
    """Every word the captions use, in the template forms, for the tokenizer's merges."""
    lines = [
        template.format(
            color=color,
            shape=shape,
            background=background,
            size=size,
            position=POSITION_PHRASE[position],
        )
        for template in TEMPLATES
        for color in SHAPE_COLORS
        for shape in SHAPES
        for background in BACKGROUNDS
        for size in Size
        for position in Position
    ]
    return lines


def train(folder: Path, plan: TrainPlan, progress: Progress | None = None) -> TrainReport:
    """Train the shapes model by ``plan`` and save it into ``folder`` (which must be empty)."""
    from backend.engine.hardware import quiet_model_libraries

    quiet_model_libraries()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(plan.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(folder, plan, progress)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(folder: Path, plan: TrainPlan, progress: Progress | None) -> TrainReport:
    diffusers = untyped_diffusers()
    from transformers import CLIPTokenizer

    stage_s: dict[str, float] = {}
    losses: dict[str, float] = {}
    report_progress = progress or (lambda stage, step, total, loss: None)

    started = time.perf_counter()
    vocab, merges = train_bpe(caption_corpus(), TOKENIZER_VOCAB)
    tokenizer_dir = write_clip_tokenizer(folder / "tokenizer", vocab, merges, MAX_PROMPT_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    images, captions = _dataset(plan)
    ids = _token_ids(tokenizer, captions)
    empty = _token_ids(tokenizer, [""])[0]
    stage_s["data"] = time.perf_counter() - started

    started = time.perf_counter()
    vae, losses["vae"] = _train_vae(images, plan, report_progress)
    latents = _encode_all(vae, images)
    scale = 1.0 / float(latents.std())
    vae.register_to_config(scaling_factor=round(scale, 5))
    stage_s["vae"] = time.perf_counter() - started

    started = time.perf_counter()
    unet, text_encoder, losses["unet"] = _train_unet(
        latents * vae.config.scaling_factor, ids, empty, vocab, plan, report_progress
    )
    stage_s["unet"] = time.perf_counter() - started

    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=diffusers.EulerDiscreteScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # Half precision halves the shipped size; loading casts back to the device's dtype.
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_clip_tokenizer(tokenizer_dir, vocab, merges, MAX_PROMPT_TOKENS)
    parameters = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
    }
    report = TrainReport(plan, stage_s, losses, parameters, torch.get_num_threads())
    write_marker(folder, {**MARKER, "training": report.as_dict()})
    return report


def _dataset(plan: TrainPlan) -> tuple[torch.Tensor, list[str]]:
    """The drawn images in [-1, 1] (N x 3 x 32 x 32) and their captions."""
    pixels = np.empty((plan.samples, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    captions: list[str] = []
    for index, (image, caption) in enumerate(training_samples(plan.seed, plan.samples)):
        pixels[index] = np.asarray(image)
        captions.append(caption)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return tensor.contiguous(), captions


def _token_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids as the pipeline makes them: padded and truncated to the model's length."""
    encoded = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids: torch.Tensor = encoded.input_ids
    return ids


def make_vae() -> Any:
    """The shapes model's autoencoder: three levels (4x latent scale), four latent channels."""
    diffusers = untyped_diffusers()

    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_PX,
    )


def make_unet() -> Any:
    """The shapes model's UNet: SD's block kinds on three levels, cross-attention width 64."""
    diffusers = untyped_diffusers()

    return diffusers.UNet2DConditionModel(
        sample_size=IMAGE_PX // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def make_text_encoder(vocab: dict[str, int]) -> Any:
    """A two-layer CLIP text model of width 64 over the caption tokenizer's vocabulary."""
    return clip_text_encoder(vocab, width=64)


def _batches(count: int, batch: int, steps: int, generator: torch.Generator) -> Iterable[Any]:
    for _ in range(steps):
        yield torch.randint(count, (batch,), generator=generator)


def _train_vae(images: torch.Tensor, plan: TrainPlan, progress: Progress) -> tuple[Any, float]:
    torch.manual_seed(plan.seed)
    vae = make_vae().train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(plan.seed + 1)
    loss_value = math.nan
    for step, index in enumerate(_batches(len(images), plan.vae_batch, plan.vae_steps, generator)):
        batch = images[index]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.l1_loss(recon, batch) + F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        progress("autoencoder", step + 1, plan.vae_steps, loss_value)
    return vae.eval(), loss_value


def _encode_all(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """Every image's latent mean, unscaled (the scale follows from their spread)."""
    with torch.inference_mode():
        parts = [
            vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)
        ]
    return torch.cat(parts).clone()


def _train_unet(
    latents: torch.Tensor,
    ids: torch.Tensor,
    empty: torch.Tensor,
    vocab: dict[str, int],
    plan: TrainPlan,
    progress: Progress,
) -> tuple[Any, Any, float]:
    diffusers = untyped_diffusers()

    torch.manual_seed(plan.seed + 2)
    unet = make_unet().train()
    text_encoder = make_text_encoder(vocab).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=plan.unet_lr, weight_decay=0.01)
    schedule = diffusers.DDPMScheduler(**SD15_SCHEDULER)
    alphas = schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    generator = torch.Generator().manual_seed(plan.seed + 3)
    loss_value = math.nan
    for step, index in enumerate(
        _batches(len(latents), plan.unet_batch, plan.unet_steps, generator)
    ):
        if step == plan.unet_steps // 2:
            for group in optimizer.param_groups:
                group["lr"] = plan.unet_lr / 2
        clean = latents[index]
        tokens = ids[index].clone()
        dropped = torch.rand(len(index), generator=generator) < CFG_DROPOUT
        tokens[dropped] = empty
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, len(alphas), (len(index),), generator=generator)
        noisy = schedule.add_noise(clean, noise, timesteps)
        context = text_encoder(tokens)[0]
        predicted = unet(noisy, timesteps, context).sample
        per_sample = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * weights[timesteps]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIP)
        optimizer.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, param in zip(ema, params, strict=True):
                average.lerp_(param.detach(), 1 - decay)
        loss_value = float(loss.detach())
        progress("unet", step + 1, plan.unet_steps, loss_value)
    with torch.no_grad():
        for average, param in zip(ema, params, strict=True):
            param.copy_(average)
    return unet, text_encoder, loss_value
