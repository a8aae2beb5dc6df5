"""The simulated device of ``imagine bench scheduler``: step times by rows and shape,
rows per step, the idle batch window, and what evicting and resuming a job costs."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backend.errors import BadInputError
from backend.scheduling.lanes import StepTimes


class TableStepModel:
    """Step times measured by ``imagine bench engine --json`` at one shape, by rows,
    interpolated in rows and scaled to other shapes by the configured pixel exponent
    (``scheduler.step_pixel_exponent``)."""

    def __init__(
        self,
        rows: Sequence[int],
        step_s: Sequence[float],
        width: int,
        height: int,
        pixel_exponent: float,
    ) -> None:
        self.pixel_exponent = pixel_exponent
        self._rows = list(rows)
        self._step_s = list(step_s)
        self._pixels = width * height

    def step_s(self, rows: int, width: int, height: int) -> float:
        """The measured step time of ``rows`` rows, interpolated, scaled to the shape."""
        scale: float = (width * height / self._pixels) ** self.pixel_exponent
        xs, ys = self._rows, self._step_s
        if rows <= xs[0]:
            base = ys[0] * rows / xs[0] if rows < xs[0] else ys[0]
        elif rows >= xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else ys[-1] / xs[-1]
            base = ys[-1] + slope * (rows - xs[-1])
        else:
            i = bisect.bisect_left(xs, rows)
            frac = (rows - xs[i - 1]) / (xs[i] - xs[i - 1])
            base = ys[i - 1] + frac * (ys[i] - ys[i - 1])
        return base * scale

    @classmethod
    def from_engine_json(cls, data: dict[str, Any], pixel_exponent: float) -> TableStepModel:
        """From the JSON object ``imagine bench engine --json`` prints (guided samples:
        two rows each), scaled to other shapes by ``pixel_exponent``."""
        try:
            batches = sorted((int(k), float(v["step_s"])) for k, v in data["batches"].items())
            width, height = int(data["width"]), int(data["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(
                f"--step-times: not an `imagine bench engine --json` result ({exc})"
            ) from exc
        rows = [2 * n for n, _ in batches]
        return cls(rows, [s for _, s in batches], width, height, pixel_exponent)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """The simulated device: its step times, rows per step, idle batch window, how
    checkpoints cost, and how many rows of preempted jobs it keeps paused in place."""

    step_model: StepTimes
    capacity_rows: int = 16
    batch_window_s: float = 0.05
    resume: ResumeCosts | None = None
    pause_rows: int = 0

    @property
    def resume_costs(self) -> ResumeCosts:
        """The checkpoint times to charge: ``resume`` or the default table."""
        return self.resume or DEFAULT_RESUME_COSTS


@dataclass(frozen=True, slots=True)
class CheckpointTime:
    """Measured seconds per sample to save a job's checkpoint (on eviction) and to load
    it (on resume), at one shape."""

    width: int
    height: int
    save_s_per_sample: float
    load_s_per_sample: float


@dataclass(frozen=True, slots=True)
class ResumeCosts:
    """Checkpoint save and load times by shape: the measured shape nearest in pixels,
    scaled linearly in pixels and samples (the checkpoint is the latents)."""

    points: tuple[CheckpointTime, ...]

    def save_s(self, samples: int, width: int, height: int) -> float:
        """Seconds an eviction of ``samples`` samples at this shape costs the device."""
        point, scale = self._nearest(width, height)
        return point.save_s_per_sample * samples * scale

    def load_s(self, samples: int, width: int, height: int) -> float:
        """Seconds a resume of ``samples`` samples at this shape costs the device."""
        point, scale = self._nearest(width, height)
        return point.load_s_per_sample * samples * scale

    def _nearest(self, width: int, height: int) -> tuple[CheckpointTime, float]:
        pixels = width * height
        point = min(self.points, key=lambda p: abs(p.width * p.height - pixels))
        return point, pixels / (point.width * point.height)

    @classmethod
    def from_engine_json(cls, data: dict[str, Any] | list[dict[str, Any]]) -> ResumeCosts:
        """From the JSON object ``imagine bench engine --json`` prints (its
        ``checkpoint`` figures), or a list of such objects (one per shape)."""
        results = data if isinstance(data, list) else [data]
        try:
            points = tuple(
                CheckpointTime(
                    int(item["checkpoint"]["width"]),
                    int(item["checkpoint"]["height"]),
                    float(item["checkpoint"]["save_s_per_sample"]),
                    float(item["checkpoint"]["load_s_per_sample"]),
                )
                for item in results
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(
                f"--resume-costs: not an `imagine bench engine --json` result ({exc})"
            ) from exc
        if not points:
            raise BadInputError("--resume-costs: no checkpoint figures")
        return cls(points)


# Checkpoint save (dumps) and load (loads) per sample of an SD1.5-class job (4-channel
# latents, euler, two steps in) measured by ``measure_checkpoint`` on the 2-core CPU
# machine the benchmark was developed on; medians of 50 after warm-up.
DEFAULT_RESUME_COSTS = ResumeCosts(
    (
        CheckpointTime(512, 512, 3.0e-5, 1.0e-5),
        CheckpointTime(1024, 1024, 6.1e-5, 1.8e-5),
    )
)
