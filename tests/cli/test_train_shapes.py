"""`imagine model train-shapes`: a sealed, carded model folder that appears whole or not at all."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import backend.shapes.shipped as shipped
from backend.shapes.shipped import CARD, MARKER, checked_pipeline, file_hashes, read_marker
from backend.shapes.train import TrainPlan
from cli import main
from cli.shapes import train_into

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY = ["--steps", "2", "--vae-steps", "2", "--samples", "32", "--eval-seeds", "1"]


def _environment(xdg: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGINE_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", XDG_DATA_HOME=str(xdg))
    # One thread for scoring too (training takes its count from the plan): two threads on
    # two cores that other work shares stall each other many times over.
    env["OMP_NUM_THREADS"] = "1"
    return env


def _command(target: Path) -> list[str]:
    return [sys.executable, "-m", "cli", "model", "train-shapes", str(target), *TINY]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One real `imagine model train-shapes` process with the tiny plan, in its own folder."""
    target = tmp_path_factory.mktemp("trained") / "shapes"
    result = subprocess.run(
        _command(target),
        capture_output=True,
        text=True,
        timeout=540,
        env=_environment(tmp_path_factory.mktemp("xdg")),
    )
    return target, result


def test_writes_a_sealed_model_folder(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Exit 0, one summary line, DIR alone in its parent, every file hashed in the marker."""
    target, result = trained
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{target}: trained in ") and "held-out prompts: background" in line
    assert [path.name for path in target.parent.iterdir()] == [target.name]
    files = read_marker(target)["files"]
    assert files == file_hashes(target)
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors"} <= set(files)
    assert checked_pipeline("shapes", target) == target


def test_card_names_command_seed_steps_and_scores(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """README.md gives the command that rebuilds it and a table of the marker's scores."""
    target, result = trained
    assert result.returncode == 0, result.stderr
    card = (target / CARD).read_text()
    marker = json.loads((target / MARKER).read_text())
    assert card.startswith("---\nlibrary_name: diffusers\n")
    command = "imagine model train-shapes DIR --seed 0 --steps 2 --vae-steps 2 --samples 32"
    assert f"Command: `{command}`" in card
    assert marker["training"]["plan"] == TrainPlan(unet_steps=2, vae_steps=2, samples=32).as_dict()
    assert marker["sampling"] == {
        "steps": 20,
        "guidance": 7.5,
        "scheduler": "euler",
        "size_px": 32,
        "seeds_per_prompt": 1,
    }
    assert "| prompts | samples | background | shape colour | shape |" in card
    for name, label in (("held_out", "held-out"), ("seen", "seen")):
        scores = marker["scores"][name]
        assert scores["samples"] == 25
        row = (
            f"| {label} | 25 | {scores['background']:.1%} | {scores['color']:.1%} | "
            f"{scores['shape']:.1%} |"
        )
        assert row in card.splitlines()


def test_progress_lines_on_stderr(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Without a terminal each stage logs lines ending at its total, with loss and ETA."""
    _, result = trained
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    for pattern in (
        r"autoencoder: 2/2 loss \d+\.\d{4}, \d+:\d\d elapsed, ETA \d+:\d\d",
        r"unet: 2/2 loss \d+\.\d{4}, \d+:\d\d elapsed, ETA \d+:\d\d",
        r"score: 2/2, \d+:\d\d elapsed, ETA \d+:\d\d",
    ):
        assert any(re.fullmatch(pattern, line) for line in lines), pattern


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for this test (two stall each other on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_trained_folder_serves_generate(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
    shapes_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Put where the package ships it, the folder runs `imagine generate` as the default."""
    target, result = trained
    assert result.returncode == 0, result.stderr
    monkeypatch.setattr(shipped, "PIPELINE_DIR", target)
    out = tmp_path / "grid.png"
    assert (
        main(["generate", "a red circle on a white background --n 1 --seed 3", "-o", str(out)]) == 0
    )
    with Image.open(out) as grid:
        assert grid.size == (256, 256)


@pytest.mark.parametrize("kind", ["non-empty dir", "file"])
def test_occupied_target_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A DIR that is a file or holds anything exits 2 with one line, touching nothing."""
    target = tmp_path / "taken"
    if kind == "file":
        target.write_text("keep")
    else:
        target.mkdir()
        (target / "keep.txt").write_text("keep")
    before = sorted(path.name for path in tmp_path.rglob("*"))
    assert main(["model", "train-shapes", str(target), *TINY]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"imagine: error: {target} exists and is not an empty directory; choose a new one\n"
    )
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


def test_missing_parent_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A DIR whose parent does not exist exits 2 with one line."""
    target = tmp_path / "absent" / "shapes"
    assert main(["model", "train-shapes", str(target), *TINY]) == 2
    assert capsys.readouterr().err == f"imagine: error: {target.parent} is not a directory\n"
    assert not target.parent.exists()


class _InterruptingStream(io.StringIO):
    """A stderr that stands for Ctrl-C at the first progress line, noting what the
    target's folder held at that moment."""

    def __init__(self, parent: Path) -> None:
        super().__init__()
        self.parent = parent
        self.held: list[Path] = []

    def write(self, text: str) -> int:
        self.held = list(self.parent.iterdir())
        raise KeyboardInterrupt


def test_interrupted_training_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C mid-training removes the staging folder it trained in; DIR never appears."""
    target = tmp_path / "shapes"
    stream = _InterruptingStream(tmp_path)
    plan = TrainPlan(unet_steps=2, vae_steps=2, samples=8, vae_batch=4)
    with pytest.raises(KeyboardInterrupt):
        train_into(target, plan, 1, stream)
    (staging,) = stream.held
    assert staging.name.startswith(f".{target.name}-")
    assert list(tmp_path.iterdir()) == []


def _stopped_mid_training(target: Path, env: dict[str, str], signum: int) -> tuple[int, str]:
    """Run the tiny training, send ``signum`` at its first progress line; (status, stderr)."""
    with subprocess.Popen(
        _command(target), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            assert process.stderr is not None
            for line in process.stderr:
                if line.startswith("autoencoder: "):
                    break
            else:
                pytest.fail(f"no progress line; exit status {process.wait()}")
            os.kill(process.pid, signum)
            rest = process.stderr.read()
            return process.wait(timeout=60), rest
        finally:
            if process.poll() is None:
                process.kill()


def test_terminated_training_cleans_up(tmp_path: Path) -> None:
    """SIGTERM mid-training exits 143 with one line and leaves neither DIR nor its staging."""
    parent = tmp_path / "models"
    parent.mkdir()
    status, stderr = _stopped_mid_training(
        parent / "shapes", _environment(tmp_path / "xdg"), signal.SIGTERM
    )
    assert status == 128 + signal.SIGTERM
    assert "terminated; the partly trained model was removed" in stderr
    assert "Traceback" not in stderr
    assert list(parent.iterdir()) == []


def test_killed_training_leaves_no_dir(tmp_path: Path) -> None:
    """SIGKILL mid-training leaves no DIR; only the hidden staging folder, with no marker."""
    parent = tmp_path / "models"
    parent.mkdir()
    target = parent / "shapes"
    status, _ = _stopped_mid_training(target, _environment(tmp_path / "xdg"), signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert not target.exists()
    (left,) = parent.iterdir()
    assert left.is_dir() and left.name.startswith(f".{target.name}-")
    assert not (left / MARKER).exists()
