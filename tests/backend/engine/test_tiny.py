"""The embedded tiny SD1.5-shaped pipeline: offline, deterministic, atomic builds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from backend.engine import tiny
from backend.engine.tiny import TINY_MODEL_DIRNAME, build_tiny_pipeline, ensure_tiny_model

SD15_DOWN_BLOCKS = [
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "DownBlock2D",
]
SD15_UP_BLOCKS = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    return [path.name for path in parent.glob(".tiny-sd-*")]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir: Path):
    from diffusers import StableDiffusionPipeline

    loaded = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def test_build_is_deterministic(tmp_path):
    """Two builds with the same seed give byte-identical files, every one of them."""
    first = build_tiny_pipeline(tmp_path / "first", seed=0)
    second = build_tiny_pipeline(tmp_path / "second", seed=0)
    hashes = file_hashes(first)
    assert "unet/diffusion_pytorch_model.safetensors" in hashes
    assert "tokenizer/vocab.json" in hashes
    assert hashes == file_hashes(second)


def test_seed_changes_the_weights(tmp_path, tiny_model_dir):
    """A different seed gives different weights (seed 0 is the embedded default)."""
    other = build_tiny_pipeline(tmp_path / "other", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert file_hashes(other)[weights] != file_hashes(tiny_model_dir)[weights]
    assert json.loads((other / "imagine_model.json").read_text())["seed"] == 1


def test_build_refuses_an_existing_destination(tmp_path):
    """An existing destination is a FileExistsError and is left untouched, no temp left."""
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_pipeline(dest)
    assert [path.name for path in dest.iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == []


def test_failed_build_removes_its_temporary_folder(tmp_path, monkeypatch):
    """A build that fails midway leaves neither the destination nor its temporary folder."""

    def explode(folder: Path, seed: int) -> None:
        (folder / "model_index.json").write_text("{}")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tiny, "_build_into", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_tiny_pipeline(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_ensure_builds_once_then_reuses(tmp_path, monkeypatch):
    """The first call builds into models_dir/tiny-sd; the next returns it untouched."""
    models_dir = tmp_path / "models"
    built = ensure_tiny_model(models_dir)
    assert built == models_dir / TINY_MODEL_DIRNAME
    index = built / "model_index.json"
    before = index.stat().st_mtime_ns

    def no_rebuild(dest: Path, seed: int = 0) -> Path:
        raise AssertionError("rebuilt an existing model")

    monkeypatch.setattr(tiny, "build_tiny_pipeline", no_rebuild)
    assert ensure_tiny_model(models_dir) == built
    assert index.stat().st_mtime_ns == before
    assert json.loads((built / "imagine_model.json").read_text()) == {
        "family": "sd15",
        "builder": "imagine tiny",
        "seed": 0,
        "format": 1,
    }


def test_ensure_ignores_a_stale_temporary_folder(tmp_path, tiny_model_dir):
    """A half-built .tiny-sd-* folder from a crash is not taken for the model."""
    models_dir = tmp_path / "models"
    stale = models_dir / ".tiny-sd-crashed"
    shutil.copytree(tiny_model_dir, stale)
    (stale / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    built = ensure_tiny_model(models_dir)
    assert built == models_dir / TINY_MODEL_DIRNAME
    assert file_hashes(built) == file_hashes(tiny_model_dir)


def test_ensure_uses_a_model_that_appears_during_its_build(tmp_path, monkeypatch, tiny_model_dir):
    """Losing the race to another builder returns the winner's folder and cleans up."""
    models_dir = tmp_path / "models"
    target = models_dir / TINY_MODEL_DIRNAME

    def raced(folder: Path, seed: int) -> None:
        shutil.copytree(tiny_model_dir, target)  # the other process finishes first
        shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)

    monkeypatch.setattr(tiny, "_build_into", raced)
    assert ensure_tiny_model(models_dir) == target
    assert leftovers(models_dir) == []


def test_ensure_refuses_an_incomplete_model_folder(tmp_path):
    """A tiny-sd folder without the completion marker is reported, never overwritten."""
    target = tmp_path / TINY_MODEL_DIRNAME
    target.mkdir()
    (target / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError):
        ensure_tiny_model(tmp_path)
    assert [path.name for path in target.iterdir()] == ["model_index.json"]


def test_components_follow_sd15_shapes(pipe):
    """SD1.5's UNet block layout, an 8x VAE latent scale, CLIP and an SD1.5 Euler schedule."""
    assert list(pipe.unet.config.down_block_types) == SD15_DOWN_BLOCKS
    assert list(pipe.unet.config.up_block_types) == SD15_UP_BLOCKS
    assert pipe.unet.config.sample_size * 8 == 512
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert pipe.vae.config.latent_channels == pipe.unet.config.in_channels == 4
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.timestep_spacing == "leading"
    assert pipe.safety_checker is None


def test_loads_offline_and_generates(pipe):
    """from_pretrained under HF_HUB_OFFLINE=1 gives a pipeline that makes a finite image."""
    import os

    import torch

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    result = pipe(
        "a lighthouse at dusk",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    assert result.images.shape == (1, 64, 64, 3)
    assert np.isfinite(result.images).all()
    assert result.images.std() > 0
