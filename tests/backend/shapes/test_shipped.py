"""The shipped pipeline's seal: whole files pass, any damage is one line naming the file."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

import backend.shapes.shipped as shipped
from backend.catalog import ModelCatalog
from backend.engine.registry import ModelRegistry
from backend.errors import ModelLoadError
from backend.shapes.shipped import CARD, MARKER, checked_pipeline, file_hashes, read_marker, seal
from cli import main
from config.settings import Settings, load_settings

WEIGHT = "unet/diffusion_pytorch_model.safetensors"
LAYOUT = {
    "model_index.json": 566,
    "scheduler/scheduler_config.json": 570,
    "text_encoder/config.json": 535,
    "text_encoder/model.safetensors": 4096,
    "tokenizer/merges.txt": 695,
    "tokenizer/vocab.json": 700,
    "unet/config.json": 1709,
    WEIGHT: 8192,
    "vae/config.json": 701,
    "vae/diffusion_pytorch_model.safetensors": 6144,
}


@pytest.fixture(scope="module")
def sealed_original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in the pipeline's layout with a card and a sealed marker (random bytes)."""
    folder = tmp_path_factory.mktemp("shipped") / "pipeline"
    rng = random.Random(7)
    for relative, size in LAYOUT.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    (folder / CARD).write_text("# shapes\n")
    (folder / MARKER).write_text(json.dumps({"family": "sd15", "format": 1}))
    seal(folder)
    return folder


@pytest.fixture
def sealed(sealed_original: Path, tmp_path: Path) -> Path:
    """A private copy of the sealed folder, free to damage."""
    return Path(shutil.copytree(sealed_original, tmp_path / "pipeline"))


def _load_error(folder: Path | None) -> str:
    with pytest.raises(ModelLoadError) as caught:
        checked_pipeline("shapes", folder)
    message = str(caught.value)
    assert "\n" not in message
    assert "imagine model train-shapes" in message
    assert caught.value.name == "shapes" and caught.value.source == "builtin:shapes"
    return message


def test_seal_records_every_file_but_marker_and_card(sealed: Path) -> None:
    """The marker lists the SHA-256 of each model file, not of itself or the card."""
    files = read_marker(sealed)["files"]
    assert sorted(files) == sorted(LAYOUT)
    assert files == file_hashes(sealed)
    assert read_marker(sealed)["family"] == "sd15"


def test_whole_copy_passes(sealed: Path) -> None:
    """A copy of a sealed folder checks out and is returned as is."""
    assert checked_pipeline("shapes", sealed) == sealed


def test_card_edit_is_not_damage(sealed: Path) -> None:
    """The card is documentation: editing it leaves the model usable."""
    (sealed / CARD).write_text("# edited\n")
    assert checked_pipeline("shapes", sealed) == sealed


def test_flipped_byte_is_corrupt(sealed: Path) -> None:
    """One flipped bit in a weight file is reported as that file being corrupt."""
    path = sealed / WEIGHT
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    message = _load_error(sealed)
    assert f"{path} is corrupt" in message


def test_truncated_file_is_corrupt(sealed: Path) -> None:
    """A weight file cut short is reported as corrupt."""
    path = sealed / WEIGHT
    os.truncate(path, path.stat().st_size // 2)
    assert f"{path} is corrupt" in _load_error(sealed)


def test_missing_file_is_named(sealed: Path) -> None:
    """A deleted file is reported as missing, by its path."""
    path = sealed / "vae" / "config.json"
    path.unlink()
    assert f"{path} is missing" in _load_error(sealed)


def test_directory_in_place_of_a_file_is_unreadable(sealed: Path) -> None:
    """A directory where a file should be is reported as unreadable, not a traceback."""
    path = sealed / "tokenizer" / "merges.txt"
    path.unlink()
    path.mkdir()
    assert f"{path} is unreadable" in _load_error(sealed)


def test_missing_marker_is_named(sealed: Path) -> None:
    """Without imagine_model.json the folder is refused, naming the marker."""
    (sealed / MARKER).unlink()
    assert f"{sealed / MARKER} is missing" in _load_error(sealed)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        "null",
        '{"family": "sd15"}',
        '{"files": null}',
        '{"files": ["model_index.json"]}',
    ],
    ids=["garbled", "empty", "list", "null", "unsealed", "files-null", "files-list"],
)
def test_bad_marker_is_unreadable(sealed: Path, content: str) -> None:
    """A garbled, unsealed or mis-shaped marker is one line naming the marker."""
    (sealed / MARKER).write_text(content)
    assert f"{sealed / MARKER} is unreadable" in _load_error(sealed)


def test_default_folder_is_read_at_call_time(sealed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checked_pipeline() without a folder checks PIPELINE_DIR as it is when called."""
    monkeypatch.setattr(shipped, "PIPELINE_DIR", sealed)
    assert checked_pipeline("shapes") == sealed
    (sealed / WEIGHT).write_bytes(b"")
    assert f"{sealed / WEIGHT} is corrupt" in _load_error(None)


def test_registry_refuses_a_damaged_shipped_model(
    sealed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ModelRegistry.source_of('shapes') raises the same one line as the check itself."""
    settings = Settings()
    registry = ModelRegistry(settings, ModelCatalog(settings), torch.device("cpu"))
    monkeypatch.setattr(shipped, "PIPELINE_DIR", sealed)
    assert registry.source_of("shapes") == str(sealed)
    (sealed / WEIGHT).unlink()
    with pytest.raises(ModelLoadError) as caught:
        registry.source_of("shapes")
    assert str(caught.value) == _load_error(sealed)
    assert f"{sealed / WEIGHT} is missing" in str(caught.value)


def test_generate_with_a_damaged_model_fails_with_one_line(
    shapes_env: Path,
    sealed: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`imagine generate` on a damaged shipped model exits 1 with one line naming the file."""
    path = sealed / WEIGHT
    path.write_bytes(path.read_bytes()[:-1])
    monkeypatch.setattr(shipped, "PIPELINE_DIR", sealed)
    assert load_settings().engine.default_model == "shapes"
    status = main(["generate", "a red circle on a white background --n 1 --seed 1"])
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imagine:")]
    assert status == 1
    assert len(said) == 1, said
    assert said[0].startswith("imagine: failed: ")
    assert f"{path} is corrupt" in said[0] and "imagine model train-shapes" in said[0]


def test_shipped_pipeline_checks_out() -> None:
    """The pipeline in the package is sealed and whole."""
    folder = checked_pipeline("shapes")
    assert folder == shipped.PIPELINE_DIR
    assert (folder / "model_index.json").is_file() and (folder / CARD).is_file()
    assert read_marker(folder)["files"] == file_hashes(folder)
