"""The prepared GPU benchmark, run as a maintainer runs it, in its CPU smoke mode so
that it cannot rot where no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def test_bench_gpu_smoke_measures_both_families_and_writes_its_report(tmp_path: Path) -> None:
    """`scripts/bench-gpu.sh OUT --smoke` builds tiny SD1.5 and SDXL, measures each by
    batch size with preemption and checkpoint figures, replays a short real scheduler
    run, prints the table and writes gpu-bench.json and gpu-bench.md."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    env.update(PYTHON=sys.executable, WHEELS=str(tmp_path / "no-wheels"))
    done = subprocess.run(
        [str(ROOT / "scripts" / "bench-gpu.sh"), str(out), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "gpu-bench.json").read_text())
    assert set(result["models"]) == {"sd15", "sdxl"} and result["smoke"] is True
    for figures in result["models"].values():
        assert set(figures["batches"]) == {"1", "2"}
        assert all(row["images_per_s"] > 0 for row in figures["batches"].values())
        assert figures["preemption"]["state_bytes_per_sample"] > 0
    assert result["scheduler_real"].get("succeeded") == 4, result["scheduler_real"]
    table = (out / "gpu-bench.md").read_text()
    assert "### sdxl" in table and table.strip() in done.stdout
