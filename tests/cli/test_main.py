"""The `imagine` command line as a whole: its commands, and errors as exit statuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main


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
    assert listed == ["generate", "migrate", "model", "bench", "degrade", "config"]


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
