"""`imagine bench engine` runs end to end and ends with one JSON object of the documented shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main


def test_bench_engine_prints_documented_json(
    engine_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last line is JSON with per-batch figures, the 95% batch, overhead, preemption
    and checkpoint save and load times."""
    args = ["bench", "engine", "--batches", "1,2", "--repeats", "1", "--steps", "2", "--json"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result["batches"]) == {"1", "2"}
    for figures in result["batches"].values():
        assert figures["images_per_s"] > 0 and figures["step_s"] > 0
    assert result["best_batch"] in (1, 2) and result["batch_95"] in (1, 2)
    assert result["speedup_best_vs_1"] >= 1.0
    assert isinstance(result["overhead_vs_stock"], float)
    assert result["preemption"]["state_bytes_per_sample"] > 0
    checkpoint = result["checkpoint"]
    assert (checkpoint["width"], checkpoint["height"]) == (64, 64)
    assert checkpoint["save_s_per_sample"] > 0 and checkpoint["load_s_per_sample"] > 0
    assert set(result["state_kib_per_sample_sd15_512"]) == {"euler", "euler_a", "dpmpp_2m", "lcm"}


def test_bench_engine_refuses_unknown_model(
    engine_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown --model exits 2 with the list of models."""
    assert main(["bench", "engine", "--model", "nope"]) == 2
    assert "available models: shapes, tiny" in capsys.readouterr().err
