"""The model registry: lazy loading, LRU unloading under a budget, clear load errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from backend.catalog import ModelCatalog
from backend.engine.registry import ModelRegistry
from backend.errors import ModelLoadError
from config.settings import load_settings


def registry_for(tmp_path: Path, sources: dict[str, Path], budget_mb: int | None) -> ModelRegistry:
    models = {name: {"source": str(path)} for name, path in sources.items()}
    settings = load_settings(
        data_dir=tmp_path,
        engine={
            "models": models,
            "default_model": next(iter(sources)),
            "memory_budget_mb": budget_mb,
        },
    )
    return ModelRegistry(settings, ModelCatalog(settings), torch.device("cpu"))


def test_least_recently_used_model_is_unloaded_over_budget(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """With room for one model, loading a second unloads the least recently used one,
    but never a model in use."""
    registry = registry_for(tmp_path, {"a": tiny_model_dir, "b": tiny_model_dir}, budget_mb=None)
    first = registry.runtime("a")
    assert registry.loaded == ["a"]
    unet = first.pipe.unet
    one_model = sum(p.numel() * p.element_size() for p in unet.parameters())
    registry.budget_bytes = int(one_model * 1.5)  # the tiny model is far below 64 MiB
    registry.runtime("b")
    assert registry.loaded == ["b"]
    registry.runtime("a", in_use=frozenset({"b"}))
    assert registry.loaded == ["b", "a"]
    assert registry.runtime("a") is not first  # reloaded after being unloaded


def test_model_folder_missing_a_component_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A model folder without its UNet fails to load with the model's name and source."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "unet")
    registry = registry_for(tmp_path, {"broken": broken}, budget_mb=None)
    with pytest.raises(ModelLoadError, match="broken"):
        registry.runtime("broken")
