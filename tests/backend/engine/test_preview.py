"""Previews: a cheap projection at any step, small WebP bytes, decoded previews on demand."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from backend.engine.preview import PreviewMaker, encode_preview, linear_preview
from backend.engine.runtime import ModelRuntime
from config.settings import ModelFamily


def test_linear_preview_of_512px_latents_is_small_webp() -> None:
    """Noisy 512 px latents (the worst case for compression) give a WebP under 100 KB."""
    latents = torch.randn((4, 64, 64), generator=torch.Generator().manual_seed(0)) * 10
    image = linear_preview(latents).resize((512, 512), Image.Resampling.NEAREST)
    data = encode_preview(image)
    assert len(data) < 100_000
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "WEBP" and decoded.size == (512, 512)


def test_preview_is_scaled_to_max_side() -> None:
    """A preview larger than max_side is scaled down keeping its aspect ratio."""
    data = encode_preview(Image.new("RGB", (1024, 512), (10, 20, 30)), max_side=256)
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.size == (256, 128)


class _Vae:
    """A VAE whose decode paints every pixel one colour, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.config = type("Config", (), {"scaling_factor": 0.5})()

    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        self.calls += 1
        n, _c, h, w = latents.shape
        pixels = torch.empty((n, 3, h * 4, w * 4))
        pixels[:, 0], pixels[:, 1], pixels[:, 2] = 1.0, -1.0, -1.0  # pure red
        return (pixels,)


class _Runtime:
    """A model whose VAE is ``vae`` (8x smaller latents than pixels in the real ones;
    4x here)."""

    vae_scale = 4

    def __init__(self, vae: _Vae) -> None:
        self.vae = vae

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor)[0]


def _job(side: int, vae: _Vae) -> object:
    latents = torch.zeros((1, 4, side, side))
    return type("Job", (), {"latents": latents, "runtime": _Runtime(vae)})()


def test_small_latents_are_previewed_through_the_models_own_vae_and_scaled_up() -> None:
    """8x8 latents (a 32 px sample) are decoded by the model's VAE, so the preview has
    the model's real colours, and scaled up to a visible 256 px; 64x64 latents keep the
    cheap projection."""
    vae = _Vae()
    maker = PreviewMaker(every_steps=1)
    data = maker.maybe(_job(8, vae), 1)  # type: ignore[arg-type]
    assert data is not None and vae.calls == 1
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.size == (256, 256)
        red, green, blue = decoded.convert("RGB").getpixel((128, 128))
        assert red > 200 and green < 60 and blue < 60
    maker.maybe(_job(64, vae), 1)  # type: ignore[arg-type]
    assert vae.calls == 1


def test_an_fp16_sdxl_vae_previews_in_fp32_as_the_final_image_decodes(
    tiny_sdxl_dir: Path,
) -> None:
    """SDXL's VAE overflows in fp16 and asks to be upcast: a preview through the model's
    VAE decodes in fp32, as the final image does, and leaves the VAE in fp16."""
    from diffusers import StableDiffusionXLPipeline

    # Its own pipeline: the session's runtime keeps its fp32 weights.
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, dtype=torch.float32)
    pipe.vae.to(torch.float16)
    assert pipe.vae.config.force_upcast
    runtime = ModelRuntime("tiny-sdxl", pipe, ModelFamily.SDXL, torch.device("cpu"))
    seen: list[torch.dtype] = []
    pipe.vae.decoder.register_forward_pre_hook(lambda _module, args: seen.append(args[0].dtype))
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    job = type("Job", (), {"latents": latents.half(), "runtime": runtime})()
    assert PreviewMaker(every_steps=1).maybe(job, 1) is not None  # type: ignore[arg-type]
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16
