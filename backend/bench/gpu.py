"""The prepared GPU benchmark (``make bench-gpu``): full-size random SD1.5 and SDXL on
the device at hand, measured as ``imagine bench engine`` measures (images/s by batch
size, overhead against the stock diffusers call, preemption latency, checkpoint sizes)
plus peak device memory and a short ``bench scheduler --real`` run, within a time
budget. Writes ``gpu-bench.json`` and ``gpu-bench.md`` into a folder and prints the
table.

``--smoke`` runs the same path with the tiny models of both families at 64 px on
whatever device there is (the CPU here), in seconds, so that the script cannot rot.

Run it as ``python -m backend.bench.gpu OUT [--smoke]`` (``scripts/bench-gpu.sh`` first
installs what the machine lacks from the wheels ``make gpu-wheels`` fetched).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The whole run's budget; a part that would start past it is skipped and says so.
BUDGET_S = 7.5 * 60


@dataclass(frozen=True, slots=True)
class Shape:
    """One model's measurement: family, size, pixels, steps and batch sizes."""

    family: str
    size: str
    side_px: int
    steps: int
    batches: tuple[int, ...]


FULL = (
    Shape("sd15", "full", 512, 30, (1, 2, 4, 8, 16)),
    Shape("sdxl", "full", 1024, 30, (1, 2, 4, 8)),
)
SMOKE = (
    Shape("sd15", "tiny", 64, 2, (1, 2)),
    Shape("sdxl", "tiny", 64, 2, (1, 2)),
)


def run(out: Path, *, smoke: bool, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the models, measure each, run the scheduler replay; the figures."""
    import torch

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "smoke": smoke,
        "models": {},
        "skipped": [],
    }
    for shape in SMOKE if smoke else FULL:
        if time.monotonic() - started > BUDGET_S:
            result["skipped"].append(f"{shape.family}: past the time budget")
            continue
        result["models"][shape.family] = _measure_model(out, shape, cuda, say)
    if time.monotonic() - started > BUDGET_S:
        result["skipped"].append("scheduler --real: past the time budget")
    else:
        result["scheduler_real"] = _scheduler_real(out, smoke, cuda)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def _measure_model(out: Path, shape: Shape, cuda: bool, say: Callable[[str], None]) -> Any:
    import torch

    from backend.bench.engine import EngineBenchConfig, run_engine_bench
    from backend.engine.random_models import ModelSize, build_random_pipeline
    from config.settings import ModelFamily, load_settings

    folder = out / "models" / f"{shape.family}-{shape.size}"
    built_s = 0.0
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        build_random_pipeline(folder, family=ModelFamily(shape.family), size=ModelSize(shape.size))
        built_s = time.monotonic() - began
    settings = load_settings(
        data_dir=out / "data",
        engine={
            "device": "cuda" if cuda else "cpu",
            "default_model": shape.family,
            "models": {shape.family: {"source": str(folder), "family": shape.family}},
        },
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    say(f"{shape.family} ({shape.size}, {shape.side_px} px, {shape.steps} steps)")
    figures = run_engine_bench(
        settings,
        EngineBenchConfig(
            model=shape.family,
            width=shape.side_px,
            height=shape.side_px,
            steps=shape.steps,
            batches=shape.batches,
            repeats=1,
        ),
        say=say,
    )
    figures["build_s"] = round(built_s, 1)
    figures["peak_memory_gib"] = (
        round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    )
    return figures


def _scheduler_real(out: Path, smoke: bool, cuda: bool) -> Any:
    """A short ``imagine bench scheduler --real`` in a process of its own; its JSON."""
    env = {
        **os.environ,
        "IMAGINE_DATA_DIR": str(out / "scheduler-data"),
        "IMAGINE_ENGINE__DEVICE": "cuda" if cuda else "cpu",
    }
    jobs = "4" if smoke else "60"
    command = [sys.executable, "-m", "cli", "bench", "scheduler", "--real", "--jobs", jobs]
    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, timeout=240, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout)[-500:], "status": done.returncode}
    return json.loads(lines[-1])


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table per model, then the scheduler line."""
    lines = [
        f"GPU benchmark on {result['device']} (torch {result['torch']}, "
        f"Python {result['python']}{', smoke' if result['smoke'] else ''}): "
        f"{result['wall_s']} s",
        "",
    ]
    for family, figures in result["models"].items():
        lines += [
            f"### {family}: {figures['width']} px, {figures['steps']} steps, "
            f"built in {figures['build_s']} s, peak memory "
            + (f"{peak} GiB" if (peak := figures["peak_memory_gib"]) is not None else "n/a"),
            "",
            "| batch | images/s | step ms | overhead vs stock |",
            "|---:|---:|---:|---:|",
        ]
        for batch, row in figures["batches"].items():
            lines.append(
                f"| {batch} | {row['images_per_s']:.2f} | {row['step_s'] * 1000:.1f} "
                f"| {row['overhead_vs_stock']:+.1%} |"
            )
        preemption = figures["preemption"]
        lines += [
            "",
            f"preemption: median {preemption['latency_s_p50'] * 1000:.1f} ms, at most "
            f"{preemption['latency_steps_max']} steps; checkpoint "
            f"{preemption['state_bytes_per_sample'] / 1024:.1f} KiB per sample",
            "",
        ]
    real = result.get("scheduler_real")
    if real is not None:
        lines.append(f"scheduler --real: `{json.dumps(real)[:400]}`")
    if result["skipped"]:
        lines.append("skipped: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run, write ``gpu-bench.json`` and ``gpu-bench.md`` into OUT, print the table."""
    parser = argparse.ArgumentParser(prog="python -m backend.bench.gpu", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 64 px, seconds")
    args = parser.parse_args(argv)
    result = run(args.out, smoke=args.smoke, say=lambda line: print(line, file=sys.stderr))
    text = table(result)
    (args.out / "gpu-bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu-bench.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
