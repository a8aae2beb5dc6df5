"""`imagine generate`: the whole path without Discord, bad input, the terminal progress view."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from backend.events.base import EventKind, JobEvent
from cli import main
from cli.generate import ProgressView


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_generate_end_to_end(engine_env: Path, tmp_path: Path) -> None:
    """`imagine generate` stores the job and images and writes a 2x2 grid PNG to -o."""
    out = tmp_path / "out.png"
    result = _run("generate", "a lighthouse at dusk --ar 16:9 --seed 7", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.size == (2 * 128, 2 * 64)
    with sqlite3.connect(engine_env / "imagine.db") as db:
        state, delivered, spec = db.execute(
            "SELECT state, delivered_at_ms, spec_json FROM jobs"
        ).fetchone()
        images = db.execute("SELECT idx, path FROM images ORDER BY idx").fetchall()
    assert state == "succeeded" and delivered is not None
    assert json.loads(spec)["seed"] == 7
    assert [idx for idx, _ in images] == [-1, 0, 1, 2, 3]
    assert all(Path(path).is_file() for _, path in images)
    assert "job_succeeded" in result.stderr


def test_same_seed_same_pixels(engine_env: Path, tmp_path: Path) -> None:
    """Two runs with the same prompt and seed produce the same grid, byte for byte."""
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "a red fox --seed 11 --n 2", "-o", str(first)]) == 0
    assert main(["generate", "a red fox --seed 11 --n 2", "-o", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()


def test_generate_without_output_prints_stored_grid(
    engine_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without -o the grid's path in the data directory is printed."""
    assert main(["generate", "tiny boat --n 1 --seed 3"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_file() and engine_env in printed.parents


BAD_PROMPTS = [
    ("--ar 16:9 --seed 4", "prompt"),
    ("a cat --seed -1", "--seed"),
    (f"a cat --seed {2**40}", "--seed"),
    ("a cat --ar 0:1", "--ar"),
    ("a cat --ar 100:1", "--ar"),
    ("a cat --model nope", "nope"),
]


@pytest.mark.parametrize(("prompt", "named"), BAD_PROMPTS)
def test_bad_prompt_exits_2_and_writes_nothing(
    engine_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], prompt: str, named: str
) -> None:
    """Each bad prompt gets one clear message naming the problem, status 2, nothing written."""
    out = tmp_path / "out.png"
    assert main(["generate", prompt, "-o", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert named in error and error.count("\n") == 0
    assert not out.exists()
    assert not (engine_env / "imagine.db").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.png")]


def test_unknown_model_lists_available(
    engine_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown --model is refused with the list of available models."""
    assert main(["generate", "a cat --model sdxl"]) == 2
    assert "available models: tiny" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing", "unwritable", "directory"])
def test_bad_output_path_exits_2(
    engine_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """An output in a missing or unwritable directory, or a directory, is refused up front."""
    target = {
        "missing": tmp_path / "nowhere" / "out.png",
        "unwritable": tmp_path / "out.png",
        "directory": tmp_path,
    }[where]
    if where == "unwritable":
        monkeypatch.setattr("cli.generate.os.access", lambda *_args: False)
    assert main(["generate", "a cat", "-o", str(target)]) == 2
    assert "output" in capsys.readouterr().err
    assert not (engine_env / "imagine.db").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_bar_with_steps_and_eta() -> None:
    """On a terminal each step redraws one bar line with steps done and the ETA."""
    stream = _Terminal()
    view = ProgressView(stream, width=10)
    view.show(JobEvent("j", EventKind.STEP, 1, 4, eta_s=3.0))
    view.show(JobEvent("j", EventKind.STEP, 4, 4, eta_s=0.0))
    view.close()
    text = stream.getvalue()
    assert "\r[##--------] 1/4 steps ETA  3.0s" in text
    assert "\r[##########] 4/4 steps ETA  0.0s" in text
    assert text.endswith("\n")


def test_pipe_gets_no_bar() -> None:
    """Off a terminal, step events draw nothing (stages are logged instead)."""
    stream = io.StringIO()
    view = ProgressView(stream)
    view.show(JobEvent("j", EventKind.STEP, 1, 4, eta_s=3.0))
    view.close()
    assert stream.getvalue() == ""
