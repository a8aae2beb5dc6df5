"""`imagine generate`: the whole path without Discord, bad input, the terminal progress view."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from backend.events.base import EventKind, JobEvent
from backend.models import SCHEDULER_NAMES
from backend.prompt import KNOWN_FLAGS
from cli import main
from cli.generate import ProgressView, copy_atomic
from config.logging import configure_logging


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
        # 128x64 samples, each tile scaled 4x to reach 256 px on its shorter side.
        assert grid.format == "PNG" and grid.size == (2 * 512, 2 * 256)
    with contextlib.closing(sqlite3.connect(engine_env / "imagine.db")) as db:
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
    assert "available models: shapes, tiny" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing", "unwritable", "directory"])
def test_bad_output_path_exits_2(
    engine_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """An output in a missing or unwritable directory, or a directory, is refused up front."""
    target = {
        "missing": tmp_path / "nowhere" / "out.png",
        # No file can be created in /proc, whoever asks (os.access says yes to root).
        "unwritable": Path("/proc/out.png"),
        "directory": tmp_path,
    }[where]
    assert main(["generate", "a cat", "-o", str(target)]) == 2
    assert "output" in capsys.readouterr().err
    assert not (engine_env / "imagine.db").exists()


def test_output_that_cannot_be_written_is_not_delivered(
    engine_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A grid that cannot be copied to -o (the disk fills up) exits 1 in one line naming
    the stored grid; the job is not marked delivered and no partial file is left."""

    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cli.generate.shutil.copyfileobj", disk_full)
    out = tmp_path / "out.png"
    assert main(["generate", "a cat --n 1 --seed 5", "-o", str(out)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("imagine: failed: could not write") and "No space left" in error
    assert "not marked delivered" in error
    assert not [p for p in tmp_path.iterdir() if "out.png" in p.name]
    with contextlib.closing(sqlite3.connect(engine_env / "imagine.db")) as db:
        state, delivered = db.execute("SELECT state, delivered_at_ms FROM jobs").fetchone()
    assert state == "succeeded" and delivered is None


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_mode_follows_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """The copied grid gets the mode of any new file under the umask (mkstemp's is 0600)."""
    source = tmp_path / "grid.png"
    source.write_bytes(b"png bytes")
    previous = os.umask(umask)
    try:
        copy_atomic(source, tmp_path / "out.png")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == mode
    assert (tmp_path / "out.png").read_bytes() == b"png bytes"


def test_help_lists_the_prompt_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """`imagine generate --help` lists every flag of the prompt language and every
    scheduler name."""
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    flags = text[text.index("prompt flags") :]
    for flag in KNOWN_FLAGS:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", flags), flag
    for name in SCHEDULER_NAMES:
        assert name in flags
    assert max(len(line) for line in flags.splitlines()) <= 79


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


def test_bar_is_drawn_full_before_the_last_log_line() -> None:
    """When the job succeeds the bar is drawn at its end, and its line ended, before the
    job_succeeded line (the last step's progress may never be published)."""
    stream = _Terminal()
    configure_logging("info", "console", stream)
    try:
        with ProgressView(stream, width=10) as view:
            view.show(JobEvent("j", EventKind.STEP, 3, 4, eta_s=1.0))
            view.show(JobEvent("j", EventKind.SUCCEEDED))
    finally:
        configure_logging("info", "json")
    lines = stream.getvalue().rstrip("\n").split("\n")
    assert lines[-2].endswith("\r[##########] 4/4 steps ETA  0.0s  ")
    assert "job_succeeded" in lines[-1]


def test_log_lines_never_land_inside_the_bar() -> None:
    """A record logged (from any logger) while the bar is drawn starts on its own line."""
    stream = _Terminal()
    configure_logging("info", "console", stream)
    try:
        with ProgressView(stream, width=10) as view:
            view.show(JobEvent("j", EventKind.STEP, 1, 4, eta_s=3.0))
            logging.getLogger("backend.worker").info("job_finished")
            view.show(JobEvent("j", EventKind.STEP, 2, 4, eta_s=2.0))
    finally:
        configure_logging("info", "json")
    lines = stream.getvalue().split("\n")
    assert lines[0] == "\r[##--------] 1/4 steps ETA  3.0s  "
    assert "job_finished" in lines[1] and "steps" not in lines[1]
    assert lines[2] == "\r[#####-----] 2/4 steps ETA  2.0s  "


def test_pipe_gets_no_bar() -> None:
    """Off a terminal, step events draw nothing (stages are logged instead)."""
    stream = io.StringIO()
    view = ProgressView(stream)
    view.show(JobEvent("j", EventKind.STEP, 1, 4, eta_s=3.0))
    view.close()
    assert stream.getvalue() == ""
