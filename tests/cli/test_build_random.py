"""`imagine model build-random`: refusals with one line and exit 2, a tiny SDXL build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main


def test_build_random_refuses_existing_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing DIR exits 2 with one line and is left alone."""
    (tmp_path / "keep.txt").write_text("x")
    assert main(["model", "build-random", "--family", "sdxl", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_build_random_refuses_missing_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DIR whose parent does not exist exits 2 with one line; nothing is created."""
    target = tmp_path / "absent" / "model"
    assert main(["model", "build-random", "--family", "sd15", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_build_random_rejects_unknown_family(capsys: pytest.CaptureFixture[str]) -> None:
    """A family without a builder is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "build-random", "--family", "sd2", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_build_random_builds_tiny_sdxl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--family sdxl --seed 3` builds a tiny SDXL pipeline into DIR and prints its path."""
    target = tmp_path / "xl"
    assert main(["model", "build-random", "--family", "sdxl", "--seed", "3", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert {"text_encoder_2", "tokenizer_2"} <= set(index)
    marker = json.loads((target / "imagine_model.json").read_text())
    assert marker["seed"] == 3 and marker["builder"] == "imagine random tiny"
