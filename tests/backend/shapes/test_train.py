"""Training the shapes model: a standard diffusers folder, reproducible bytes, progress."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.shapes.shipped import MARKER, file_hashes
from backend.shapes.train import IMAGE_PX, TrainPlan, TrainReport, train
from backend.shapes.train import MARKER as TRAIN_MARKER

# Small batches keep a run to seconds; the plan fields are the same as a real run's.
PLAN = TrainPlan(unet_steps=2, vae_steps=2, samples=8, unet_batch=4, vae_batch=4)
WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)

Calls = list[tuple[str, int, int, float]]


def _train(folder: Path, plan: TrainPlan) -> tuple[TrainReport, Calls]:
    calls: Calls = []
    folder.mkdir()
    report = train(folder, plan, lambda *call: calls.append(call))
    return report, calls


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainReport, Calls]:
    """One smoke run of the tiny plan, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("train") / "first"
    report, calls = _train(folder, PLAN)
    return folder, report, calls


def test_smoke_run_loads_in_the_stock_pipeline(first: tuple[Path, TrainReport, Calls]) -> None:
    """The folder loads with StableDiffusionPipeline.from_pretrained and makes a 32x32 image."""
    import diffusers

    stock: Any = diffusers.StableDiffusionPipeline  # untyped: diffusers has no annotations
    folder, _, _ = first
    pipe = stock.from_pretrained(
        folder, dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        "a red circle on a white background",
        num_inference_steps=1,
        height=IMAGE_PX,
        width=IMAGE_PX,
        generator=torch.Generator().manual_seed(0),
    )
    (image,) = result.images
    assert image.size == (IMAGE_PX, IMAGE_PX)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.vae.config.scaling_factor > 0


def test_folder_has_the_diffusers_layout_and_marker(
    first: tuple[Path, TrainReport, Calls],
) -> None:
    """save_pretrained's layout plus a marker recording the plan (hashes come later)."""
    folder, report, _ = first
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / component).is_dir(), component
    marker = json.loads((folder / MARKER).read_text())
    assert {key: marker[key] for key in TRAIN_MARKER} == TRAIN_MARKER
    assert marker["training"]["plan"] == PLAN.as_dict() == report.plan.as_dict()
    assert "files" not in marker
    assert set(report.stage_s) == {"data", "vae", "unet"}
    assert set(report.final_loss) == {"vae", "unet"}
    assert all(math.isfinite(loss) for loss in report.final_loss.values())
    assert set(report.parameters) == {"unet", "vae", "text_encoder"}


def test_weights_are_float16_on_disk(first: tuple[Path, TrainReport, Calls]) -> None:
    """Every tensor of the three weight files is stored in float16."""
    from safetensors import safe_open

    folder, _, _ = first
    for relative in WEIGHT_FILES:
        with safe_open(str(folder / relative), framework="pt") as weights:
            names = list(weights.keys())
            assert names, relative
            dtypes = {weights.get_slice(name).get_dtype() for name in names}
        assert dtypes == {"F16"}, relative


def test_progress_sees_each_stage_up_to_its_total(first: tuple[Path, TrainReport, Calls]) -> None:
    """progress(stage, step, total, loss) runs once per step, autoencoder then UNet."""
    _, _, calls = first
    expected = [("autoencoder", step, PLAN.vae_steps) for step in range(1, PLAN.vae_steps + 1)]
    expected += [("unet", step, PLAN.unet_steps) for step in range(1, PLAN.unet_steps + 1)]
    assert [(stage, step, total) for stage, step, total, _ in calls] == expected
    assert all(math.isfinite(loss) for *_, loss in calls)


def test_same_plan_same_bytes_other_seed_other_weights(
    first: tuple[Path, TrainReport, Calls], tmp_path: Path
) -> None:
    """A second run of the plan gives identical files; another seed changes the weights."""
    folder, _, _ = first
    _train(tmp_path / "again", PLAN)
    _train(tmp_path / "seeded", dataclasses.replace(PLAN, seed=1))
    expected = file_hashes(folder)
    assert set(WEIGHT_FILES) <= set(expected)
    assert file_hashes(tmp_path / "again") == expected
    other = file_hashes(tmp_path / "seeded")
    assert other.keys() == expected.keys()
    for relative in WEIGHT_FILES:
        assert other[relative] != expected[relative], relative
