"""Device and dtype choice, and quieting the model libraries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from config.settings import ModelSettings

if TYPE_CHECKING:
    pass


def quiet_model_libraries() -> None:
    """Silence diffusers' and transformers' progress bars and chatter: the service reports
    its own progress, and their warnings about optional extras mean nothing to operators."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        logging_utils: Any = library.utils.logging
        logging_utils.set_verbosity_error()
        logging_utils.disable_progress_bar()


def untyped_diffusers() -> Any:
    """The ``diffusers`` module, typed ``Any``: its constructors are not annotated, which
    strict mypy would reject at every call. Imported on first use (torch comes with it)."""
    import diffusers

    return diffusers


def pick_device(preference: str) -> torch.device:
    """``cuda`` when asked for or available under ``auto``, else ``cpu``."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_devices(preference: str) -> list[torch.device]:
    """Every CUDA device when CUDA is used (one runner each), else the CPU."""
    device = pick_device(preference)
    if device.type != "cuda":
        return [device]
    return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]


def pick_dtype(model: ModelSettings, device: torch.device) -> torch.dtype:
    """Unless the model names a dtype: bf16 on GPUs that support it (fp16's range
    overflows in some VAEs and UNets; bf16's does not), else fp16 on CUDA; fp32 on the
    CPU."""
    if model.dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[
        model.dtype
    ]
