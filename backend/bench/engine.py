"""``imagine bench engine``: throughput by batch size, the loop's overhead against the
stock diffusers call, preemption latency and checkpoint size.

Every figure is a median over ``repeats`` timed runs after one warm-up run.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from backend.engine import state as checkpoints
from backend.engine.batch import BatchCore, BatchLimits, DeviceRunner
from backend.engine.hardware import pick_device
from backend.engine.registry import ModelRegistry
from backend.engine.runtime import ModelRuntime
from backend.engine.sampler import stock_generate
from backend.engine.schedulers import make_scheduler
from backend.engine.state import DenoiseState, scheduler_state
from backend.engine.types import EngineEvent, Outcome, Request
from backend.models import JobSpec
from config.settings import Settings

DEFAULT_BATCHES = (1, 2, 4, 8, 16)


@dataclass(frozen=True, slots=True)
class EngineBenchConfig:
    """What ``imagine bench engine`` measures: one job shape (``model`` None for the
    default model) at each of the ``batches`` sizes, ``repeats`` timed runs each."""

    model: str | None = None
    width: int = 64
    height: int = 64
    steps: int = 4
    guidance: float = 7.0
    scheduler: str = "euler"
    batches: tuple[int, ...] = DEFAULT_BATCHES
    repeats: int = 5


def run_engine_bench(
    settings: Settings, config: EngineBenchConfig, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Measure and return the figures (the shape ``--json`` prints)."""
    from backend.catalog import ModelCatalog

    catalog = ModelCatalog(settings)
    device = pick_device(settings.engine.device)
    registry = ModelRegistry(settings, catalog, device)
    name = config.model or catalog.default
    runtime = registry.runtime(name)
    base = catalog.resolve(
        JobSpec(
            prompt="a lighthouse at dusk, oil painting",
            seed=1,
            width=config.width,
            height=config.height,
            steps=config.steps,
            guidance=config.guidance,
            model=name,
            n=1,
            scheduler=config.scheduler,
        )
    )
    batches: dict[str, dict[str, float]] = {}
    for size in config.batches:
        try:
            figures = _measure_batch(runtime, base, size, config.repeats)
        except torch.OutOfMemoryError:
            say(f"batch {size}: out of memory, stopping")
            break
        batches[str(size)] = figures
        say(
            f"batch {size:>3}: {figures['images_per_s']:8.2f} images/s  "
            f"step {figures['step_s'] * 1000:8.2f} ms  "
            f"overhead vs stock {figures['overhead_vs_stock']:+.1%}"
        )
    peak = max(figures["images_per_s"] for figures in batches.values())
    best = max(batches, key=lambda key: batches[key]["images_per_s"])
    batch_95 = min(
        (int(key) for key, figures in batches.items() if figures["images_per_s"] >= 0.95 * peak)
    )
    overheads = [figures["overhead_vs_stock"] for figures in batches.values()]
    result: dict[str, Any] = {
        "device": _device_name(device),
        "model": name,
        "width": config.width,
        "height": config.height,
        "steps": config.steps,
        "scheduler": config.scheduler,
        "batches": batches,
        "best_batch": int(best),
        "batch_95": batch_95,
        "speedup_best_vs_1": round(peak / batches["1"]["images_per_s"], 3)
        if "1" in batches
        else None,
        "overhead_vs_stock": round(statistics.median(overheads), 4),
        "overhead_vs_stock_max": round(max(overheads), 4),
        "preemption": _measure_preemption(runtime, base),
        "checkpoint": measure_checkpoint(runtime, base, config.repeats),
        "state_kib_per_sample_sd15_512": {
            name: round(size / 1024, 1) for name, size in state_sizes_sd15_512(runtime).items()
        },
    }
    return result


def _measure_batch(
    runtime: ModelRuntime, base: JobSpec, size: int, repeats: int
) -> dict[str, float]:
    """Our loop with ``size`` independent one-sample jobs; and one job of ``size`` samples
    against the stock pipeline call for the overhead."""
    requests = [
        Request(f"b{index}", replace(base, seed=index + 1, prompt=f"{base.prompt} {index}"))
        for index in range(size)
    ]
    run_jobs = [_timed_core(runtime, requests, size) for _ in range(repeats + 1)][1:]
    grouped = Request("g", replace(base, n=size))
    ours: list[float] = []
    stock: list[float] = []
    # Interleaved, so drift on a shared machine hits both sides alike; first pair warms up.
    for _ in range(repeats + 1):
        ours.append(_timed_core(runtime, [grouped], size)[0])
        stock.append(_timed_stock(runtime, replace(base, n=size)))
    ours, stock = ours[1:], stock[1:]
    total_s = statistics.median(seconds for seconds, _ in run_jobs)
    step_s = statistics.median(step for _, steps in run_jobs for step in steps)
    return {
        "images_per_s": round(size / total_s, 3),
        "step_s": round(step_s, 6),
        "overhead_vs_stock": round(statistics.median(ours) / statistics.median(stock) - 1, 4),
    }


def _timed_core(
    runtime: ModelRuntime, requests: list[Request], size: int
) -> tuple[float, list[float]]:
    core = BatchCore(lambda _name: runtime, BatchLimits(max_rows=4 * size))
    for request in requests:
        core.submit(request)
    steps: list[float] = []
    _sync(runtime.device)
    started = time.perf_counter()
    with torch.inference_mode():
        while not core.idle:
            before = core.steps_run
            core.step()
            _sync(runtime.device)
            if core.steps_run > before and core.last_step_s is not None:
                steps.append(core.last_step_s)  # the shared step alone: no admission, no decode
    return time.perf_counter() - started, steps


def _timed_stock(runtime: ModelRuntime, spec: JobSpec) -> float:
    _sync(runtime.device)
    started = time.perf_counter()
    stock_generate(runtime, spec)
    _sync(runtime.device)
    return time.perf_counter() - started


def _measure_preemption(runtime: ModelRuntime, base: JobSpec, samples: int = 7) -> dict[str, Any]:
    """From ``evict()`` to the job's slot being free (its EVICTED event), on a running
    device thread, against the measured step time."""
    long = replace(base, steps=200, n=2)
    latencies: list[float] = []
    sizes: list[int] = []
    for attempt in range(samples):
        evicted = threading.Event()
        box: dict[str, Any] = {}

        def sink(event: EngineEvent, box: dict[str, Any] = box, done: Any = evicted) -> None:
            if event.outcome is Outcome.EVICTED:
                box["at"] = time.perf_counter()
                box["bytes"] = len(event.checkpoint or b"")
                done.set()
            elif event.outcome is Outcome.PROGRESS and event.step == 3:
                box.setdefault("running", time.perf_counter())

        core = BatchCore(lambda _name: runtime)
        runner = DeviceRunner(core, sink, name="bench", batch_window_s=0)
        runner.start()
        try:
            runner.submit(Request(f"p{attempt}", long))
            while "running" not in box:
                time.sleep(0.001)
            # Land the request at varying points inside a step.
            time.sleep((attempt / samples) * (core.step_s or 0.01))
            requested = time.perf_counter()
            runner.evict(f"p{attempt}")
            evicted.wait(60)
            latencies.append(box["at"] - requested)
            sizes.append(box["bytes"])
        finally:
            runner.stop()
    step_s = core.step_s or float("nan")
    latency = statistics.median(latencies)
    return {
        "latency_s_p50": round(latency, 6),
        "latency_s_max": round(max(latencies), 6),
        "step_s": round(step_s, 6),
        "latency_steps_max": round(max(latencies) / step_s, 3),
        "state_bytes_per_sample": statistics.median(sizes) // long.n,
    }


def measure_checkpoint(
    runtime: ModelRuntime, base: JobSpec, repeats: int, samples: int = 4
) -> dict[str, Any]:
    """Seconds to save (``dumps``, latents from the device) and load (``loads`` onto the
    device) the checkpoint of a ``samples``-sample job of ``base``'s model and shape, two
    steps in, per sample: what an eviction and a resume cost the device. Medians over
    ``repeats`` runs after a warm-up."""
    name = base.scheduler or "euler"
    scheduler = make_scheduler(name, runtime.scheduler_config)
    scheduler.set_timesteps(max(base.steps or 0, 2))
    generator = torch.Generator("cpu").manual_seed(0)
    shape = (samples, *runtime.latent_shape(base))
    latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    kwargs = {"generator": generator} if name in ("euler_a", "lcm") else {}
    for t in scheduler.timesteps[:2]:
        model_input = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(model_input * 0.1, t, latents, **kwargs).prev_sample
    state = DenoiseState(
        latents.to(runtime.device), 2, scheduler_state(scheduler), [generator.get_state()]
    )
    saves, loads = [], []
    for _ in range(repeats + 1):
        _sync(runtime.device)
        started = time.perf_counter()
        blob = checkpoints.dumps(state)
        saved = time.perf_counter()
        checkpoints.loads(blob, runtime.device)
        _sync(runtime.device)
        saves.append(saved - started)
        loads.append(time.perf_counter() - saved)
    return {
        "model": base.model,
        "width": base.width,
        "height": base.height,
        "save_s_per_sample": round(statistics.median(saves[1:]) / samples, 7),
        "load_s_per_sample": round(statistics.median(loads[1:]) / samples, 7),
    }


def state_sizes_sd15_512(runtime: ModelRuntime) -> dict[str, int]:
    """Checkpoint bytes per sample of an SD1.5 512x512 job (latents 4x64x64, fp32 here)
    after two steps of each scheduler, driven with stand-in model outputs (the size does
    not depend on the UNet's values)."""
    sizes = {}
    for name in ("euler", "euler_a", "dpmpp_2m", "lcm"):
        scheduler = make_scheduler(name, runtime.scheduler_config)
        scheduler.set_timesteps(30)
        generator = torch.Generator("cpu").manual_seed(0)
        latents = torch.randn((1, 4, 64, 64), generator=generator) * scheduler.init_noise_sigma
        kwargs = {"generator": generator} if name in ("euler_a", "lcm") else {}
        for t in scheduler.timesteps[:2]:
            model_input = scheduler.scale_model_input(latents, t)
            latents = scheduler.step(model_input * 0.1, t, latents, **kwargs).prev_sample
        state = DenoiseState(latents, 2, scheduler_state(scheduler), [generator.get_state()])
        sizes[name] = len(checkpoints.dumps(state))
    return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()}threads"
