"""Clocks, injected wherever policy depends on time."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def monotonic_s() -> float:
    """Seconds on a clock that never goes back (durations, deadlines)."""
    return time.monotonic()
