"""Small preview images of a job's latents while it denoises.

Two kinds: a linear latent-to-RGB projection (microseconds, any step) and a real
decode every N steps through a tiny autoencoder (TAESD architecture) when one is
configured, else the model's own VAE. Previews are WebP, a few KB to tens of KB.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

if TYPE_CHECKING:
    from backend.engine.sampler import ActiveJob

# Approximate RGB of each SD latent channel (rows: channels 0..3), fitted on
# SD1.5-family VAEs; good enough to show composition and colour while denoising.
SD_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def linear_preview(latents: torch.Tensor) -> Image.Image:
    """An RGB image of one sample's latents (C, h, w) via a fixed channel projection."""
    factors = torch.tensor(SD_LATENT_RGB, dtype=torch.float32)
    channels = min(latents.shape[0], factors.shape[0])
    rgb = torch.einsum("chw,cr->hwr", latents[:channels].float().cpu(), factors[:channels])
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def encode_preview(image: Image.Image, max_side: int = 512, quality: int = 70) -> bytes:
    """WebP bytes of ``image`` scaled so its longer side is at most ``max_side``."""
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=2)
    return buffer.getvalue()


# Latents of at most this many pixels (images up to 128x128 on an 8x VAE) are decoded
# with the model's own VAE for every preview: it costs about as much as the linear
# projection there, and the projection's colours are fitted on SD1.5 VAEs only (a small
# model's own latent space, such as the shapes model's, comes out in wrong colours).
CHEAP_DECODE_LATENT_PX = 16 * 16
# Previews smaller than this on their longer side are scaled up by a whole factor
# (nearest neighbour), so a 32-pixel sample is visible in a chat message.
MIN_PREVIEW_SIDE = 256


class PreviewMaker:
    """Decides when a job gets a preview and renders it (first sample only).

    ``every_steps``: a linear preview every that many steps (0: never); small latents
    (:data:`CHEAP_DECODE_LATENT_PX`) are decoded with the model's VAE instead.
    ``decode_every_steps``: a decoded preview instead, every that many steps (0: never),
    through ``decoder`` (a diffusers ``AutoencoderTiny``) or the model's VAE.
    """

    def __init__(
        self,
        every_steps: int = 1,
        decode_every_steps: int = 0,
        decoder: Any | None = None,
        max_side: int = 512,
    ) -> None:
        self.every_steps = every_steps
        self.decode_every_steps = decode_every_steps
        self.decoder = decoder
        self.max_side = max_side

    def maybe(self, job: ActiveJob, done: int) -> bytes | None:
        """The encoded preview due after ``done`` steps, or None when none is due."""
        if job.latents is None or done <= 0:
            return None
        if self.decode_every_steps and done % self.decode_every_steps == 0:
            return encode_preview(_visible(self._decoded(job)), self.max_side)
        if self.every_steps and done % self.every_steps == 0:
            latent_px = job.latents.shape[-1] * job.latents.shape[-2]
            small = latent_px <= CHEAP_DECODE_LATENT_PX
            image = self._vae_decoded(job) if small else self._linear(job)
            return encode_preview(_visible(image), self.max_side)
        return None

    def _linear(self, job: ActiveJob) -> Image.Image:
        assert job.latents is not None
        image = linear_preview(job.latents[0])
        scale = job.runtime.vae_scale
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)

    def _decoded(self, job: ActiveJob) -> Image.Image:
        return self._decode_with(job, self.decoder)

    def _vae_decoded(self, job: ActiveJob) -> Image.Image:
        return self._decode_with(job, None)

    @staticmethod
    def _decode_with(job: ActiveJob, decoder: Any | None) -> Image.Image:
        """Through ``decoder`` (an ``AutoencoderTiny``), else the model's own VAE as the
        final image is decoded (an fp16 SDXL VAE in fp32)."""
        assert job.latents is not None
        latents = job.latents[:1]
        if decoder is not None:
            with torch.inference_mode():
                pixels = decoder.decode(latents.to(decoder.dtype), return_dict=False)[0]
        else:
            pixels = job.runtime.decode_pixels(latents)
        array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def _visible(image: Image.Image) -> Image.Image:
    """``image`` scaled up by a whole factor to at least :data:`MIN_PREVIEW_SIDE`."""
    factor = -(-MIN_PREVIEW_SIDE // max(image.size))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
