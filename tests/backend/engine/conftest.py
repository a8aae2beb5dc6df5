"""The tiny model loaded once for the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.engine.runtime import ModelRuntime
from config.settings import ModelFamily


@pytest.fixture(scope="session")
def runtime(tiny_model_dir: Path) -> ModelRuntime:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return ModelRuntime("tiny", pipe, ModelFamily.SD15, torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL-architecture pipeline with random weights, built once per session."""
    from backend.engine.random_models import ModelSize, build_random_pipeline

    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    return build_random_pipeline(folder, ModelFamily.SDXL, ModelSize.TINY)


@pytest.fixture(scope="session")
def sdxl_runtime(tiny_sdxl_dir: Path) -> ModelRuntime:
    """The tiny SDXL pipeline loaded for the engine, as the registry loads it."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return ModelRuntime("tiny-sdxl", pipe, ModelFamily.SDXL, torch.device("cpu"))
