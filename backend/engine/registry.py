"""Loads declared models with diffusers ``from_pretrained`` and keeps them per device."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import torch

from backend.catalog import ModelCatalog
from backend.engine.hardware import pick_dtype, quiet_model_libraries
from backend.errors import ModelLoadError
from config.settings import BUILTIN_SHAPES, EngineSettings, ModelFamily, Settings

if TYPE_CHECKING:
    from backend.engine.runtime import ModelRuntime


log = structlog.get_logger(__name__)


_PIPELINES = {
    ModelFamily.SD15: "StableDiffusionPipeline",
    ModelFamily.SD2: "StableDiffusionPipeline",
    ModelFamily.SDXL: "StableDiffusionXLPipeline",
}


class ModelRegistry:
    """Models by name for one device: loaded on first use, unloaded least-recently-used
    when the device's memory budget would be exceeded. Thread-safe."""

    def __init__(self, settings: Settings, catalog: ModelCatalog, device: torch.device) -> None:
        self._settings = settings
        self._catalog = catalog
        self.device = device
        self._loaded: OrderedDict[str, ModelRuntime] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.budget_bytes = _budget_bytes(settings.engine.memory_budget_mb, device)
        quiet_model_libraries()

    def source_of(self, name: str) -> str:
        """Where the model loads from: the shipped shapes pipeline once its files check
        out, the embedded tiny model (built on first use), or the declared source."""
        model = self._catalog.get(name)
        if model.source == BUILTIN_SHAPES:
            from backend.shapes.shipped import checked_pipeline

            return str(checked_pipeline(name))
        if ModelCatalog.is_builtin(model):
            from backend.engine.tiny import ensure_tiny_model

            return str(ensure_tiny_model(self._settings.models_dir))
        return model.source

    def runtime(self, name: str, in_use: frozenset[str] = frozenset()) -> ModelRuntime:
        """The loaded model ``name``; may unload others not in ``in_use`` to fit the budget."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            from backend.engine.runtime import ModelRuntime

            model = self._catalog.get(name)
            runtime = ModelRuntime(name, self._load(name), model.family, self.device)
            runtime.vae_tiling_above_px = self._settings.engine.vae_tiling_above_px
            self._loaded[name] = runtime
            self._sizes[name] = _model_bytes(runtime.pipe)
            self._fit_budget(keep=in_use | {name})
            return runtime

    def unload(self, name: str) -> bool:
        """Drop model ``name`` (a batch running it keeps its reference until it ends);
        whether it was loaded."""
        with self._lock:
            if self._loaded.pop(name, None) is None:
                return False
            self._sizes.pop(name, None)
        log.info("model_unloaded", model=name, why="asked")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return True

    @property
    def loaded(self) -> list[str]:
        """Loaded model names, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _fit_budget(self, keep: frozenset[str]) -> None:
        if self.budget_bytes is None:
            return
        for candidate in list(self._loaded):
            if sum(self._sizes.values()) <= self.budget_bytes:
                return
            if candidate in keep:
                continue
            del self._loaded[candidate]
            size = self._sizes.pop(candidate)
            log.info("model_unloaded", model=candidate, freed_mb=size // 2**20)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _load(self, name: str) -> Any:
        import diffusers

        model = self._catalog.get(name)
        source = self.source_of(name)
        is_folder = os.sep in source or source.startswith(".")
        if is_folder and not Path(source, "model_index.json").is_file():
            raise ModelLoadError(name, source, "folder has no model_index.json")
        pipeline_class = getattr(diffusers, _PIPELINES[model.family])
        dtype = pick_dtype(model, self.device)
        started = time.perf_counter()
        try:
            pipe = pipeline_class.from_pretrained(
                source, dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ModelLoadError(name, source, str(exc).splitlines()[0]) from exc
        for component in ("unet", "vae", "text_encoder", "tokenizer"):
            if getattr(pipe, component, None) is None:
                raise ModelLoadError(name, source, f"pipeline has no {component}")
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        prepare_for_device(pipe, self._settings.engine, self.device, name)
        log.info(
            "model_loaded",
            model=name,
            device=str(self.device),
            dtype=str(dtype),
            load_s=round(time.perf_counter() - started, 2),
        )
        return pipe


def prepare_for_device(pipe: Any, engine: EngineSettings, device: torch.device, name: str) -> None:
    """PyTorch's scaled-dot-product attention everywhere; on CUDA the UNet in
    channels-last memory format and, when ``engine.compile_unet`` asks, compiled (the
    compile happens at its first steps; the wrapping is logged here, the first step's
    time by the device runner)."""
    from diffusers.models import attention_processor

    sdpa: Any = attention_processor.AttnProcessor2_0
    if not all(isinstance(p, sdpa) for p in pipe.unet.attn_processors.values()):
        pipe.unet.set_attn_processor(sdpa())
    if device.type != "cuda":
        return
    if engine.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if engine.compile_unet:
        started = time.perf_counter()
        pipe.unet = torch.compile(pipe.unet, dynamic=True)
        log.info("unet_compile_wrapped", model=name, s=round(time.perf_counter() - started, 2))


def _model_bytes(pipe: Any) -> int:
    total = 0
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is not None:
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def _budget_bytes(budget_mb: int | None, device: torch.device) -> int | None:
    if budget_mb is not None:
        return budget_mb * 2**20
    if device.type == "cuda":
        # As the driver reports it (MIG slices and other processes' reservations show).
        _free, total = torch.cuda.mem_get_info(device)
        return int(total * 0.9)
    return None
