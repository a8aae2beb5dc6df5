"""A job's denoising state as bytes: latents, scheduler internals, generator states.

The format is a safetensors blob, loaded without pickle. Plain values (step
counters, flags) travel in a JSON document stored as a ``uint8`` tensor under
``__meta__``; tensors and lists of tensors are stored by dotted name. Prompt
embeddings are not stored: they are recomputed from the spec on resume.

Recomputable scheduler tables (betas, alphas, ...) are left out: a resumed job
builds its scheduler from the model's config, calls ``set_timesteps`` and then
overwrites every mutable attribute from the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from backend.errors import CheckpointError

FORMAT_VERSION = 1
_META = "__meta__"

# Functions of the scheduler config alone; rebuilt by ``from_config``.
_RECOMPUTED = frozenset(
    {"betas", "alphas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t", "final_alpha_cumprod"}
)


@dataclass(slots=True)
class DenoiseState:
    """Everything needed to continue a job's denoising at ``step``.

    ``timesteps`` is the job's own schedule (all of it for text-to-image; the tail
    from the start step for image-to-image); ``step`` indexes into it.
    """

    latents: torch.Tensor
    step: int
    scheduler_state: dict[str, Any]
    generator_states: list[torch.Tensor]


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's mutable attributes: tensors, lists of tensors and plain values."""
    state: dict[str, Any] = {}
    for key, value in vars(scheduler).items():
        if key in _RECOMPUTED or key in ("config", "_internal_dict"):
            continue
        if _storable(value):
            state[key] = value
    return state


def restore_scheduler(scheduler: Any, state: dict[str, Any]) -> None:
    """Overwrite a freshly configured scheduler's attributes with a saved state."""
    for key, value in state.items():
        setattr(scheduler, key, value)


def _storable(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return True
    if isinstance(value, list | tuple):
        return all(_storable(item) and not isinstance(item, list | tuple) for item in value)
    return False


def dumps(state: DenoiseState) -> bytes:
    """Serialize a state to bytes (each tensor copied to the CPU, contiguous)."""
    tensors: dict[str, torch.Tensor] = {"latents": _cpu(state.latents)}
    plain: dict[str, Any] = {}
    for key, value in state.scheduler_state.items():
        plain[key] = _encode_value(f"s.{key}", value, tensors)
    for index, generator_state in enumerate(state.generator_states):
        tensors[f"g.{index}"] = _cpu(generator_state)
    meta = {
        "format": FORMAT_VERSION,
        "step": state.step,
        "generators": len(state.generator_states),
        "scheduler": plain,
    }
    tensors[_META] = torch.frombuffer(bytearray(json.dumps(meta).encode()), dtype=torch.uint8)
    return bytes(st_save(tensors))


def loads(blob: bytes, device: torch.device | str = "cpu") -> DenoiseState:
    """Load a state written by :func:`dumps`; tensors land on ``device``.

    Raises :class:`CheckpointError` for anything that is not such a state: garbage,
    a truncated blob, a document with missing or mistyped fields.
    """
    try:
        tensors = st_load(blob)
        meta = json.loads(bytes(tensors.pop(_META).tolist()).decode())
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"checkpoint format {found!r} is not supported")
    try:
        return _state_of(meta, tensors, device)
    except Exception as exc:  # a missing key, a value of the wrong type
        raise CheckpointError(f"malformed checkpoint: {type(exc).__name__}: {exc}") from exc


def _state_of(meta: dict[str, Any], tensors: dict[str, torch.Tensor], device: Any) -> DenoiseState:
    schedule = {
        key: _decode_value(value, tensors, device) for key, value in meta["scheduler"].items()
    }
    generators = [tensors[f"g.{index}"] for index in range(int(meta["generators"]))]
    if any(state.dtype != torch.uint8 or state.dim() != 1 for state in generators):
        raise ValueError("generator states must be 1-d uint8 tensors")
    latents = tensors["latents"]
    if not latents.is_floating_point():
        raise ValueError(f"latents must be floating point, not {latents.dtype}")
    return DenoiseState(
        latents=latents.to(device),
        step=int(meta["step"]),
        scheduler_state=schedule,
        generator_states=generators,
    )


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    # Always a copy of its own: schedulers keep views of one storage under several
    # names (UniPC's ``timestep_list`` holds elements of ``timesteps``), and
    # safetensors refuses tensors that share memory.
    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def _encode_value(name: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[name] = _cpu(value)
        # Schedulers keep some tables on the CPU on purpose; restore them there.
        return {"tensor": name, "on_cpu": value.device.type == "cpu"}
    if isinstance(value, list | tuple):
        return {
            "list": [_encode_value(f"{name}.{i}", item, tensors) for i, item in enumerate(value)],
            "tuple": isinstance(value, tuple),
        }
    return {"value": value}


def _decode_value(encoded: Any, tensors: dict[str, torch.Tensor], device: Any) -> Any:
    if "tensor" in encoded:
        tensor = tensors[encoded["tensor"]]
        return tensor if encoded.get("on_cpu", False) else tensor.to(device)
    if "list" in encoded:
        items = [_decode_value(item, tensors, device) for item in encoded["list"]]
        return tuple(items) if encoded.get("tuple") else items
    return encoded["value"]
