"""Clocks, injected wherever policy depends on time."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def wall_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def monotonic_s() -> float:
    """Seconds on a clock that never goes back (durations, deadlines)."""
    return time.monotonic()


def usage_month(now_ms: int) -> str:
    """The calendar month (UTC) usage is accounted in, as ``YYYY-MM``."""
    return datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m")
