"""Loads declared models with diffusers ``from_pretrained`` and keeps them per device."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

from backend.catalog import ModelCatalog
from backend.errors import ModelLoadError
from config.settings import ModelFamily, ModelSettings, Settings

_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
_PIPELINES = {
    ModelFamily.SD15: "StableDiffusionPipeline",
    ModelFamily.SD2: "StableDiffusionPipeline",
    ModelFamily.SDXL: "StableDiffusionXLPipeline",
}


def pick_device(preference: str) -> torch.device:
    """``cuda`` when asked for or available under ``auto``, else ``cpu``."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(model: ModelSettings, device: torch.device) -> torch.dtype:
    """fp16 on CUDA and fp32 on CPU unless the model names a dtype."""
    if model.dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        model.dtype
    ]


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler instance of the named kind, from a pipeline's scheduler config."""
    import diffusers

    class_name, extra = _SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **extra)


class ModelRegistry:
    """Pipelines by model name for one device, loaded on first use."""

    def __init__(self, settings: Settings, catalog: ModelCatalog, device: torch.device) -> None:
        self._settings = settings
        self._catalog = catalog
        self.device = device
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def source_of(self, name: str) -> str:
        """Where the model loads from; builds the embedded tiny model on first use."""
        model = self._catalog.get(name)
        if ModelCatalog.is_builtin(model):
            from backend.engine.tiny import ensure_tiny_model

            return str(ensure_tiny_model(self._settings.models_dir))
        return model.source

    def pipeline(self, name: str) -> Any:
        """The loaded pipeline for ``name`` on this registry's device."""
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def _load(self, name: str) -> Any:
        import diffusers

        model = self._catalog.get(name)
        source = self.source_of(name)
        is_folder = os.sep in source or source.startswith(".")
        if is_folder and not Path(source, "model_index.json").is_file():
            raise ModelLoadError(name, source, "folder has no model_index.json")
        pipeline_class = getattr(diffusers, _PIPELINES[model.family])
        dtype = pick_dtype(model, self.device)
        try:
            pipe = pipeline_class.from_pretrained(
                source, dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(name, source, str(exc).splitlines()[0]) from exc
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe
