"""End to end: fifty jobs from twenty users in one channel, all delivered, each user's
message carrying that user's own picture, no message edited faster than the throttle."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from config.settings import Settings
from tests.bot.burst import add_users, edit_gaps, readings, run_burst
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow


async def test_fifty_jobs_from_twenty_users_all_arrive_each_with_its_own_picture(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """Every job's result lands on its requester's progress message; every tile of it
    reads back (scorer) as that user's background and colour, and the shapes as asked in
    at least 90% of tiles (the model's measured accuracy is 96.5%); progress edits of a
    message are never closer than the edit interval; REST calls per job stay within
    duration / interval + the README's constant."""
    emu = discord_emulator
    users = add_users(emu, 20)
    settings = bot_env(emu)
    report = await run_burst(emu, settings, users, jobs=50, timeout_s=240)
    shapes_right = tiles = 0
    for job in report.jobs:
        message = job.message
        assert message is not None and message.attachments, job.user.name
        assert f"<@{job.user.id}>" in message.content and job.ask.prompt in message.content
        for background, color, shape in readings(message):
            assert (background, color) == (job.ask.background, job.ask.color), (
                job.user.name,
                job.ask,
                background,
                color,
            )
            tiles += 1
            shapes_right += shape is job.ask.shape
        gaps = edit_gaps(message)
        assert all(gap >= settings.bot.edit_interval_s * 0.9 for gap in gaps), gaps
        assert job.rest_calls <= report.bound(job), (job.rest_calls, report.bound(job))
    assert shapes_right >= 0.9 * tiles, (shapes_right, tiles)
    print("burst figures:", report.figures())
