"""``imagine bench queue``: the figures' shape on both backends (never their values)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from backend.bench.queue import run_queue_bench
from tests.conftest import REDIS_URL

FIGURES = {
    "enqueue_ops_s",
    "claim_ops_s",
    "ack_ops_s",
    "ops_s",
    "claim_p50_ms",
    "claim_p99_ms",
    "queued",
}


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace of this test alone; anything left under it fails the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client = Redis.from_url(REDIS_URL)
    try:
        left = list(client.scan_iter(match=f"{name}:*", count=1000))
        if left:
            client.delete(*left)
        assert not left, f"the bench left {len(left)} keys behind"
    finally:
        client.close()


def test_bench_reports_every_figure_for_both_backends(namespace: str) -> None:
    """Both backends get positive rates and latencies, the preload is reported, the
    last line emitted is the JSON of the result, and the bench keys are deleted."""
    lines: list[str] = []
    result = run_queue_bench(
        backends=["memory", "redis"],
        ops=200,
        preload=500,
        redis_url=REDIS_URL,
        namespace=namespace,
        as_json=True,
        emit=lines.append,
    )
    assert json.loads(lines[-1]) == result
    assert result["targets"] == {"memory_ops_s": 20000, "redis_ops_s": 2000}
    assert set(result["backends"]) == {"memory", "redis"}
    for figures in result["backends"].values():
        assert set(figures) == FIGURES
        assert figures["queued"] == 500
        assert all(figures[name] > 0 for name in FIGURES - {"queued"})
        assert figures["claim_p99_ms"] >= figures["claim_p50_ms"]
    assert any(line.startswith("redis ") for line in lines[:-1])
