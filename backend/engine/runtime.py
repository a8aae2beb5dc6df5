"""A loaded pipeline's components and the family-specific parts of the loop: text and
image encoding, decoding, latent shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
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
        """Prompt embeddings for all of the job's rows (recomputed on every resume)."""
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

    def decode(self, latents: torch.Tensor, generators: list[torch.Generator]) -> list[Any]:
        """Pixels of finished latents, as the stock pipeline produces them."""
        vae = self.vae
        with torch.inference_mode():
            if self.family is ModelFamily.SDXL:
                return self._decode_sdxl(latents)
            image = vae.decode(
                latents / vae.config.scaling_factor, return_dict=False, generator=generators
            )[0]
            images: list[Any] = self.pipe.image_processor.postprocess(
                image, output_type="pil", do_denormalize=[True] * image.shape[0]
            )
        return images

    def _decode_sdxl(self, latents: torch.Tensor) -> list[Any]:
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(torch.float32)
            latents = latents.to(torch.float32)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        try:
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        images: list[Any] = self.pipe.image_processor.postprocess(image, output_type="pil")
        return images

    def encode_image(
        self, image: Image.Image, spec: JobSpec, generators: list[torch.Generator]
    ) -> torch.Tensor:
        """Scaled VAE latents of ``image`` resized to the spec, one sample per generator."""
        resized = image.convert("RGB").resize((spec.width, spec.height), Image.Resampling.LANCZOS)
        pixels = self.pipe.image_processor.preprocess(resized).to(self.device, self.vae.dtype)
        with torch.inference_mode():
            rows = [
                self.vae.encode(pixels).latent_dist.sample(generator=generator)
                for generator in generators
            ]
        latents: torch.Tensor = torch.cat(rows).to(self.dtype) * self.vae.config.scaling_factor
        return latents
