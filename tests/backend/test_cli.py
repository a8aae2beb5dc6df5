"""The ``imagine`` command line: generate, bad input, config show, migrate."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli import main
from storage.migrate import discover


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
        monkeypatch.setattr("cli.os.access", lambda *_args: False)
    assert main(["generate", "a cat", "-o", str(target)]) == 2
    assert "output" in capsys.readouterr().err
    assert not (engine_env / "imagine.db").exists()


def test_malformed_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed config file is one line naming the file, status 2."""
    config = tmp_path / "bad.toml"
    config.write_text("[engine\n")
    assert main(["--config", str(config), "generate", "a cat"]) == 2
    error = capsys.readouterr().err.strip()
    assert str(config) in error and error.count("\n") == 0


def test_bad_setting_from_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad environment value exits 2 naming the key and value."""
    monkeypatch.setenv("IMAGINE_LOG__LEVEL", "loud")
    assert main(["config", "show"]) == 2
    assert "log.level='loud'" in capsys.readouterr().err


def test_config_show_masks_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config show` prints the effective settings as JSON without the token."""
    monkeypatch.setenv("IMAGINE_DISCORD__TOKEN", "tok-123456789")
    monkeypatch.setenv("IMAGINE_PROMPT__MAX_STEPS", "42")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["prompt"]["max_steps"] == 42
    assert "tok-123456789" not in out


def test_migrate_reports_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`imagine migrate` creates the database at the newest schema version."""
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    latest = len(discover())
    assert main(["migrate"]) == 0
    assert f"schema version {latest}" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "imagine.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == latest


def test_build_tiny_refuses_existing_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`model build-tiny` into an existing directory exits 2 and leaves it alone."""
    (tmp_path / "keep.txt").write_text("x")
    assert main(["model", "build-tiny", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_degrade_override_is_set_shown_and_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`imagine degrade set heavy` pins the level across runs; `clear` hands it back;
    a level that does not exist exits 2."""
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path))
    assert main(["degrade"]) == 0
    assert "level normal (no override)" in capsys.readouterr().out
    assert main(["degrade", "set", "heavy", "--actor", "7"]) == 0
    capsys.readouterr()
    assert main(["degrade", "show"]) == 0
    assert "level heavy (override heavy)" in capsys.readouterr().out
    assert main(["degrade", "set", "bogus"]) == 2
    assert "normal, light, medium, heavy" in capsys.readouterr().err
    assert main(["degrade", "clear"]) == 0
    assert "level normal (no override)" in capsys.readouterr().out
