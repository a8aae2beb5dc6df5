"""`imagine config show`, `migrate`, `model build-tiny` and `degrade`."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from cli import main
from storage.migrate import discover


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
    with contextlib.closing(sqlite3.connect(tmp_path / "imagine.db")) as db:
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


@pytest.mark.parametrize("actor", [str(2**64), "-1"])
def test_degrade_actor_out_of_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], actor: str
) -> None:
    """An --actor id SQLite cannot hold is refused in one line before the database exists."""
    monkeypatch.setenv("IMAGINE_DATA_DIR", str(tmp_path / "data"))
    assert main(["degrade", "set", "heavy", "--actor", actor]) == 2
    error = capsys.readouterr().err.strip()
    assert "--actor" in error and error.count("\n") == 0
    assert not (tmp_path / "data").exists()
