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
