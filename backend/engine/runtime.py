"""A loaded pipeline's components and the family-specific parts of the loop: text and
image encoding, decoding, latent shapes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from backend.models import JobSpec
from config.settings import ModelFamily


@dataclass(slots=True)
class Conditioning:
    """Text conditioning rows in UNet order: unconditional rows first when guided."""

    embeds: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep_cond: torch.Tensor | None = None


# Prompt embeddings kept per loaded model: a resumed job, and a reroll or variation of
# a recent prompt, reuse them instead of running the text encoder(s) again.
CONDITIONING_CACHE_SIZE = 64


class ModelRuntime:
    """A loaded pipeline's components and the family-specific parts of the loop."""

    def __init__(self, name: str, pipe: Any, family: ModelFamily, device: torch.device) -> None:
        self.name = name
        self.pipe = pipe
        self.family = family
        self.device = device
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.dtype: torch.dtype = pipe.unet.dtype
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels: int = int(self.unet.config.in_channels)
        self.scheduler_config = pipe.scheduler.config
        self.guidance_embedding = self.unet.config.time_cond_proj_dim is not None
        # Images with more pixels are decoded in tiles (None: never).
        self.vae_tiling_above_px: int | None = None
        self._conditioning: OrderedDict[Hashable, Conditioning] = OrderedDict()
        self._conditioning_lock = threading.Lock()
        self.conditioning_hits = 0
        self.conditioning_misses = 0

    def latent_shape(self, spec: JobSpec) -> tuple[int, int, int]:
        """(channels, height, width) of one sample's latents for ``spec``."""
        return (self.latent_channels, spec.height // self.vae_scale, spec.width // self.vae_scale)

    def uses_guidance(self, spec: JobSpec) -> bool:
        # As the stock pipelines decide: guidance-embedded (LCM-distilled) UNets never
        # run the unconditional half.
        """Whether ``spec`` runs classifier-free guidance (an unconditional row per sample)."""
        guidance = spec.guidance if spec.guidance is not None else 0.0
        return guidance > 1.0 and not self.guidance_embedding

    def encode(self, spec: JobSpec) -> Conditioning:
        """Prompt embeddings for all of the job's rows: from the model's small cache of
        recent ones when the same prompt, negative prompt, sample count and guidance (and
        for SDXL the size) were encoded lately, as on a resume, a reroll or a variation;
        the text encoders run otherwise. The result is shared: callers never write to it.
        """
        key = self._conditioning_key(spec)
        with self._conditioning_lock:
            cached = self._conditioning.get(key)
            if cached is not None:
                self._conditioning.move_to_end(key)
                self.conditioning_hits += 1
                return replace(cached, added=dict(cached.added))
        cond = self._encode(spec)
        with self._conditioning_lock:
            self.conditioning_misses += 1
            self._conditioning[key] = cond
            while len(self._conditioning) > CONDITIONING_CACHE_SIZE:
                self._conditioning.popitem(last=False)
        return replace(cond, added=dict(cond.added))

    def _conditioning_key(self, spec: JobSpec) -> Hashable:
        guidance = spec.guidance if self.guidance_embedding else None
        size = (spec.width, spec.height) if self.family is ModelFamily.SDXL else None
        return (spec.prompt, spec.negative_prompt, spec.n, self.uses_guidance(spec), guidance, size)

    def _encode(self, spec: JobSpec) -> Conditioning:
        cfg = self.uses_guidance(spec)
        negative = spec.negative_prompt or None
        with torch.inference_mode():
            if self.family is ModelFamily.SDXL:
                cond = self._encode_sdxl(spec, cfg, negative)
            else:
                positive, uncond = self.pipe.encode_prompt(
                    spec.prompt, self.device, spec.n, cfg, negative
                )
                cond = Conditioning(torch.cat([uncond, positive]) if cfg else positive)
            if self.guidance_embedding:
                scale = torch.tensor((spec.guidance or 0.0) - 1).repeat(spec.n)
                cond.timestep_cond = self.pipe.get_guidance_scale_embedding(
                    scale, embedding_dim=self.unet.config.time_cond_proj_dim
                ).to(device=self.device, dtype=self.dtype)
        return cond

    def _encode_sdxl(self, spec: JobSpec, cfg: bool, negative: str | None) -> Conditioning:
        pipe = self.pipe
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=spec.prompt,
            device=self.device,
            num_images_per_prompt=spec.n,
            do_classifier_free_guidance=cfg,
            negative_prompt=negative,
        )
        if pipe.text_encoder_2 is None:
            projection_dim = int(pooled.shape[-1])
        else:
            projection_dim = pipe.text_encoder_2.config.projection_dim
        size = (spec.height, spec.width)
        time_ids = pipe._get_add_time_ids(
            size, (0, 0), size, dtype=embeds.dtype, text_encoder_projection_dim=projection_dim
        )
        if cfg:
            embeds = torch.cat([neg_embeds, embeds])
            pooled = torch.cat([neg_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        time_ids = time_ids.to(self.device).repeat(spec.n, 1)
        return Conditioning(
            embeds.to(self.device),
            {"text_embeds": pooled.to(self.device), "time_ids": time_ids},
        )

    @contextmanager
    def tiled_if_large(self, latents: torch.Tensor) -> Iterator[bool]:
        """The VAE in tiled mode for the block when ``latents`` make an image larger than
        :attr:`vae_tiling_above_px` (a large upscale); whether it is tiled."""
        pixels = latents.shape[-1] * latents.shape[-2] * self.vae_scale**2
        tile = (
            self.vae_tiling_above_px is not None
            and pixels > self.vae_tiling_above_px
            and hasattr(self.vae, "enable_tiling")
        )
        if not tile:
            yield False
            return
        self.vae.enable_tiling()
        try:
            yield True
        finally:
            self.vae.disable_tiling()

    def decode(self, latents: torch.Tensor, generators: list[torch.Generator]) -> list[Any]:
        """Pixels of finished latents, as the stock pipeline produces them (in tiles for
        an image larger than :attr:`vae_tiling_above_px`)."""
        with self.tiled_if_large(latents):
            return self._decode(latents, generators)

    def _decode(self, latents: torch.Tensor, generators: list[torch.Generator]) -> list[Any]:
        pixels = self.decode_pixels(latents, generators)
        with torch.inference_mode():
            if self.family is ModelFamily.SDXL:
                # The stock SDXL pipeline's invisible watermark, when it carries one.
                watermark = getattr(self.pipe, "watermark", None)
                if watermark is not None:
                    pixels = watermark.apply_watermark(pixels)
                images: list[Any] = self.pipe.image_processor.postprocess(pixels, output_type="pil")
                return images
            images = self.pipe.image_processor.postprocess(
                pixels, output_type="pil", do_denormalize=[True] * pixels.shape[0]
            )
        return images

    def decode_pixels(
        self, latents: torch.Tensor, generators: list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """The VAE's pixels (-1 to 1) of ``latents``, not post-processed: what
        :meth:`decode` and the previews build on. As the stock pipelines decode: SDXL
        in fp32 when an fp16 VAE asks for it (it overflows in fp16), de-normalized by
        the VAE's per-channel statistics where it has them."""
        vae = self.vae
        scale = vae.config.scaling_factor
        with torch.inference_mode():
            if self.family is not ModelFamily.SDXL:
                scaled = latents.to(vae.dtype) / scale
                pixels: torch.Tensor = vae.decode(scaled, return_dict=False, generator=generators)[
                    0
                ]
                return pixels
            with self._vae_upcast() as dtype:
                latents = latents.to(dtype)
                stats = self._latent_stats(latents)
                if stats is not None:
                    latents = latents * stats[1] / scale + stats[0]
                else:
                    latents = latents / scale
                pixels = vae.decode(latents, return_dict=False)[0]
        return pixels

    @contextmanager
    def _vae_upcast(self) -> Iterator[torch.dtype]:
        """The VAE in fp32 for the block when it is fp16 and its config asks for it (SDXL's
        VAE overflows in fp16); yields the dtype its inputs must have."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if upcast:
            vae.to(torch.float32)
        try:
            yield vae.dtype
        finally:
            if upcast:
                vae.to(torch.float16)

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        config = self.vae.config
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        return (
            torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype),
        )

    def encode_image(
        self, image: Image.Image, spec: JobSpec, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Scaled VAE latents of ``image`` resized to the spec, one sample per generator."""
        resized = image.convert("RGB").resize((spec.width, spec.height), Image.Resampling.LANCZOS)
        pixels = self.pipe.image_processor.preprocess(resized).to(self.device, self.vae.dtype)
        if self.family is ModelFamily.SDXL:
            return self._encode_image_sdxl(pixels, generators)
        with torch.inference_mode():
            rows = [
                self.vae.encode(pixels).latent_dist.sample(generator=generator)
                for generator in generators
            ]
        latents: torch.Tensor = torch.cat(rows).to(self.dtype) * self.vae.config.scaling_factor
        return latents

    def _encode_image_sdxl(
        self, pixels: torch.Tensor, generators: list[torch.Generator]
    ) -> torch.Tensor:
        # As the stock SDXL img2img pipeline: fp32 encoding when the VAE asks for it, and
        # latents normalized by the VAE's per-channel statistics when it has them.
        with torch.inference_mode(), self._vae_upcast() as dtype:
            pixels = pixels.to(dtype)
            rows = [
                self.vae.encode(pixels).latent_dist.sample(generator=generator)
                for generator in generators
            ]
        latents = torch.cat(rows).to(self.dtype)
        stats = self._latent_stats(latents)
        scale = self.vae.config.scaling_factor
        scaled: torch.Tensor = (
            (latents - stats[0]) * scale / stats[1] if stats is not None else scale * latents
        )
        return scaled
