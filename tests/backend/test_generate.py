"""The terminal progress view of `imagine generate`."""

from __future__ import annotations

import io

from backend.events.base import EventKind, JobEvent
from cli.generate import ProgressView


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
