"""Prompt embeddings are encoded once per device: resumes, rerolls and variations reuse
the model's small cache of recent ones."""

from __future__ import annotations

from dataclasses import replace

import torch

from backend.engine import runtime as runtime_module
from backend.engine.runtime import ModelRuntime
from backend.models import JobSpec


def _spec(prompt: str = "a lighthouse", **changes: object) -> JobSpec:
    base = JobSpec(prompt=prompt, seed=1, width=64, height=64, steps=2, guidance=7.0, n=2)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_same_prompt_is_encoded_once_and_gives_the_same_rows(runtime: ModelRuntime) -> None:
    """A second job of the same prompt (another seed: a reroll, or the same job resumed)
    hits the cache and gets equal tensors; another prompt, sample count or guidance on/off
    is encoded anew."""
    first = runtime.encode(_spec("a cache test prompt"))
    hits, misses = runtime.conditioning_hits, runtime.conditioning_misses
    again = runtime.encode(_spec("a cache test prompt", seed=99))
    assert (runtime.conditioning_hits, runtime.conditioning_misses) == (hits + 1, misses)
    assert torch.equal(first.embeds, again.embeds) and first.added == again.added
    runtime.encode(_spec("a cache test prompt", n=1))
    runtime.encode(_spec("a cache test prompt", guidance=1.0))
    runtime.encode(_spec("a cache test prompt", negative_prompt="blur"))
    assert runtime.conditioning_misses == misses + 3


def test_sdxl_keys_include_the_size(sdxl_runtime: ModelRuntime) -> None:
    """SDXL's added time ids depend on the image size, so another size is encoded anew."""
    sdxl_runtime.encode(_spec("an sdxl cache prompt"))
    misses = sdxl_runtime.conditioning_misses
    sdxl_runtime.encode(_spec("an sdxl cache prompt", width=96))
    sdxl_runtime.encode(_spec("an sdxl cache prompt", seed=5))
    assert sdxl_runtime.conditioning_misses == misses + 1


def test_the_cache_is_bounded(runtime: ModelRuntime) -> None:
    """Past its size the least recently used entries go."""
    for number in range(runtime_module.CONDITIONING_CACHE_SIZE + 5):
        runtime.encode(_spec(f"bounded prompt {number}", n=1, guidance=1.0))
    assert len(runtime._conditioning) == runtime_module.CONDITIONING_CACHE_SIZE
