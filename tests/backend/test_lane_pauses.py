"""Lane pauses across processes: two backends on one data directory and one Redis
queue (as two GPU hosts) follow each other's pauses within a load-watcher pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend.app import Backend, open_backend
from backend.models import Lane
from backend.operations import Operations
from config.settings import load_settings
from tests.backend.worker.conftest import eventually

# How often each backend catches up with the other (degrade.sample_interval_s).
PASS_S = 0.2


def _paused_on(backend: Backend) -> set[Lane]:
    """The lanes ``backend``'s devices may not start, by its claim filter."""
    return set(Lane) - set(backend.claim_filter().lanes)


async def test_two_processes_follow_each_others_pauses(
    engine_env: Path, redis_namespace: str
) -> None:
    """A pause made on one backend applies there at once and on the other at its next
    pass; a resume made on the other comes back the same way; pauses made on both at
    the same moment are both kept."""
    settings = load_settings(
        queue={"backend": "redis", "namespace": redis_namespace},
        degrade={"sample_interval_s": PASS_S},
    )
    async with (
        open_backend(settings, local_worker=False) as first,
        open_backend(settings, local_worker=False) as second,
    ):
        here, there = Operations(first.parts()), Operations(second.parts())
        assert await here.pause(Lane.BATCH, actor_id=1) == [Lane.BATCH]
        assert _paused_on(first) == {Lane.BATCH}
        await eventually(lambda: _paused_on(second) == {Lane.BATCH})
        assert there.paused_lanes() == [Lane.BATCH]

        assert await there.resume(Lane.BATCH, actor_id=2) == []
        await eventually(lambda: not _paused_on(first))

        await asyncio.gather(
            here.pause(Lane.REALTIME, actor_id=1), there.pause(Lane.BACKGROUND, actor_id=2)
        )
        both = {Lane.REALTIME, Lane.BACKGROUND}
        await eventually(lambda: _paused_on(first) == _paused_on(second) == both)
    async with open_backend(settings, local_worker=False) as restarted:
        assert restarted.paused_lanes == both, "pauses survive a restart"
