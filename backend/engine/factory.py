"""Builds a device's engine (a :class:`DeviceRunner` over a :class:`BatchCore`) from settings."""

from __future__ import annotations

from typing import Any

import structlog
import torch

from backend.engine.batch import BatchCore, BatchKey, BatchLimits, DeviceRunner
from backend.engine.preview import PreviewMaker
from backend.engine.registry import ModelRegistry
from backend.engine.runtime import ModelRuntime
from backend.engine.types import EngineFactory, EventSink
from config.settings import EngineSettings

log = structlog.get_logger(__name__)

# Rough activation memory of one UNet row per latent pixel, in bytes at 2 bytes per
# value (SD1.5-class UNets with attention at full resolution); SDXL is about twice.
ROW_BYTES_PER_LATENT_PIXEL = 60_000


def make_engine_factory(
    registry: ModelRegistry, settings: EngineSettings, name: str
) -> EngineFactory:
    """A factory the worker calls with its event sink."""

    def factory(sink: EventSink) -> DeviceRunner:
        core: BatchCore | None = None

        def runtimes(model: str) -> ModelRuntime:
            in_use = core.models_in_use if core is not None else frozenset()
            return registry.runtime(model, in_use)

        core = BatchCore(
            runtimes,
            BatchLimits(max_rows=settings.max_batch_rows),
            previews=_previews(settings, registry.device),
            memory_rows=memory_rows if registry.device.type == "cuda" else None,
        )
        return DeviceRunner(core, sink, name=name, batch_window_s=settings.batch_window_ms / 1000)

    return factory


def memory_rows(runtime: ModelRuntime, key: BatchKey) -> int | None:
    """Rows that fit in the device's free memory by a per-latent-pixel estimate."""
    if runtime.device.type != "cuda":
        return None
    free: int = torch.cuda.mem_get_info(runtime.device)[0]
    latent_pixels = key.latent_height * key.latent_width
    per_row = latent_pixels * ROW_BYTES_PER_LATENT_PIXEL * max(runtime.dtype.itemsize, 2) // 2
    if runtime.family.value == "sdxl":
        per_row *= 2
    return max(1, int(free * 0.8) // max(per_row, 1))


def _previews(settings: EngineSettings, device: torch.device) -> PreviewMaker | None:
    if not settings.preview_every_steps and not settings.decoded_preview_every_steps:
        return None
    decoder: Any = None
    if settings.preview_decoder and settings.decoded_preview_every_steps:
        import diffusers

        dtype = torch.float16 if device.type == "cuda" else torch.float32
        tiny: Any = diffusers.AutoencoderTiny
        decoder = tiny.from_pretrained(settings.preview_decoder, dtype=dtype).to(device)
        log.info("preview_decoder_loaded", source=settings.preview_decoder)
    return PreviewMaker(
        settings.preview_every_steps,
        settings.decoded_preview_every_steps,
        decoder,
        settings.preview_max_side,
    )
