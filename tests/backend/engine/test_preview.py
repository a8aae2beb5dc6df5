"""Previews: a cheap projection at any step, small WebP bytes, decoded previews on demand."""

from __future__ import annotations

import io

import torch
from PIL import Image

from backend.engine.preview import encode_preview, linear_preview


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
