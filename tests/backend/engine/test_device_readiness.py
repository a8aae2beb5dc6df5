"""Readiness for real GPUs, checked where the CPU can check it: the dtype rule, the
attention processor, VAE tiling of large images."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from backend.engine import hardware
from backend.engine.registry import prepare_for_device
from backend.engine.runtime import ModelRuntime
from config.settings import EngineSettings, ModelSettings


def test_auto_dtype_is_bf16_where_the_gpu_supports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: fp32 on the CPU, bf16 on a GPU with bf16, fp16 on one without; a named
    dtype wins."""
    model = ModelSettings(source="x")
    assert hardware.pick_dtype(model, torch.device("cpu")) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert hardware.pick_dtype(model, torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert hardware.pick_dtype(model, torch.device("cuda")) is torch.float16
    named = ModelSettings(source="x", dtype="float32")
    assert hardware.pick_dtype(named, torch.device("cuda")) is torch.float32


def test_loaded_unets_use_scaled_dot_product_attention(runtime: ModelRuntime) -> None:
    """Every attention layer runs PyTorch's SDPA processor after preparation."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    prepare_for_device(runtime.pipe, EngineSettings(), torch.device("cpu"), runtime.name)
    processors = runtime.unet.attn_processors.values()
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)


def test_large_images_are_decoded_in_tiles_and_small_ones_whole(runtime: ModelRuntime) -> None:
    """Above the threshold the VAE is tiled for the decode and back to whole after it."""
    seen: list[Any] = []
    original = runtime._decode

    def spy(latents: torch.Tensor, generators: list[torch.Generator]) -> list[Any]:
        seen.append(runtime.vae.use_tiling)
        return original(latents, generators)

    runtime._decode = spy  # type: ignore[method-assign]
    try:
        runtime.vae_tiling_above_px = 32 * 32
        latents = torch.zeros((1, 4, 8, 8))
        runtime.decode(latents, [torch.Generator().manual_seed(0)])
        runtime.vae_tiling_above_px = 4096 * 4096
        runtime.decode(latents, [torch.Generator().manual_seed(0)])
    finally:
        del runtime._decode
        runtime.vae_tiling_above_px = None
    assert seen == [True, False] and runtime.vae.use_tiling is False
