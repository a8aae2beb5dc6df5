"""Fixtures of the chaos scenarios, and the report of their measured times."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import TIMINGS, Lab, open_lab


@pytest.fixture
def lab(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Lab]:
    """A scenario's own data directory; every process, Redis and mount it starts is
    stopped when the test ends."""
    with open_lab(tmp_path, tiny_model_dir) as chaos_lab:
        yield chaos_lab


@pytest.fixture(scope="session", autouse=True)
def _timings_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session, the measured times go to chaos-timings.json."""
    yield
    if TIMINGS:
        path = tmp_path_factory.getbasetemp() / "chaos-timings.json"
        path.write_text(json.dumps(TIMINGS, indent=2) + "\n")
        TIMINGS_FILE.append(path)


TIMINGS_FILE: list[Path] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each scenario's measured times, and where the JSON copy is."""
    if not TIMINGS:
        return
    terminalreporter.section("chaos timings")
    for entry in TIMINGS:
        terminalreporter.write_line(json.dumps(entry))
    for path in TIMINGS_FILE:
        terminalreporter.write_line(f"written to {path}")
