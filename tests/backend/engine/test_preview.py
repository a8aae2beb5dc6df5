"""Previews: a cheap projection at any step, small WebP bytes, decoded previews on demand."""

from __future__ import annotations

import io

import torch
from PIL import Image

from backend.engine.preview import PreviewMaker, encode_preview, linear_preview


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


def _job(side: int, vae: _Vae) -> object:
    runtime = type("Runtime", (), {"vae": vae, "vae_scale": 4})()
    return type("Job", (), {"latents": torch.zeros((1, 4, side, side)), "runtime": runtime})()


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
