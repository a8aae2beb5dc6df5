"""The `imagine` command line as a whole: its commands, and errors as exit statuses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from backend.errors import BackendError, BadInputError
from cli import main
from cli.common import checked_user_id, run_command, settings_for
from config.logging import REDACTED, redact_text
from storage.errors import DataDirError


def test_help_lists_every_group_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """`imagine --help` exits 0 listing each group's commands in their documented order."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    listed = [
        line.split()[0]
        for line in capsys.readouterr().out.splitlines()
        # Command names sit at four spaces; wrapped help text is indented deeper.
        if line.startswith("    ") and not line.startswith("     ")
    ]
    assert listed == ["generate", "bot", "migrate", "model", "bench", "degrade", "config"]


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


def test_error_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """A failure's one line never shows credentials, e.g. of a Redis URL it names."""

    def fails(_args: argparse.Namespace) -> int:
        raise BackendError("cannot reach redis://:hunter2@cache:6379/0")

    assert run_command(argparse.Namespace(func=fails)) == 1
    error = capsys.readouterr().err
    assert "hunter2" not in error and "cache:6379/0" in error


def test_unusable_storage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unusable data directory or database file is an operator's error: status 2."""

    def fails(_args: argparse.Namespace) -> int:
        raise DataDirError(Path("/data"), "is not writable (Read-only file system)")

    assert run_command(argparse.Namespace(func=fails)) == 2
    assert capsys.readouterr().err.startswith("imagine: error: data directory /data")


def test_redis_password_is_registered_as_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the settings registers the Redis password, so a log line or an exception
    showing it bare (not inside a URL) is redacted too."""
    monkeypatch.setenv("IMAGINE_QUEUE__REDIS_URL", "redis://default:s3cret-pw@cache:6379/0")
    settings_for(argparse.Namespace())
    assert redact_text("AUTH s3cret-pw failed") == f"AUTH {REDACTED} failed"


def test_user_ids_span_sqlite_integers() -> None:
    """User ids run from 0 to 2**63-1 (SQLite's INTEGER); beyond, or negative, is bad input."""
    assert checked_user_id(0, "--user-id") == 0
    assert checked_user_id(2**63 - 1, "--user-id") == 2**63 - 1
    for bad in (2**63, 2**64, -1):
        with pytest.raises(BadInputError, match="--user-id"):
            checked_user_id(bad, "--user-id")
