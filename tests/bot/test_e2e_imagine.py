"""End to end: /imagine and its buttons through the real discord.py client, the Discord
emulator, the service and the shipped shapes model."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import pytest
from PIL import Image

from config.settings import Settings
from tests.bot.conftest import TEST_EDIT_INTERVAL_S, job_of, running_bot
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow


async def test_imagine_posts_one_progress_message_then_the_grid_with_buttons(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """/imagine answers at once with the queue position, edits that one message as steps
    advance, and ends it with a 2x2 PNG grid of 256 px tiles and U1-4, V1-4, reroll."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        alice = emu.users["alice"]
        ix = await emu.slash(
            alice, emu.channel, "imagine", prompt="a red circle on a white background --seed 3"
        )
        await ix.wait_response(timeout_s=5)
        progress = ix.original()
        assert progress is not None and not progress.ephemeral_to
        job_id = job_of(progress)
        final = await run.final_message(job_id)
    assert final.id == progress.id, "the progress message itself becomes the result"
    contents = [payload["content"] for _at, payload in progress.edits]
    assert "Waiting to start" in contents[0] or "%" in contents[0]
    assert "**a red circle on a white background --seed 3" in contents[-1]
    assert f"<@{alice.id}>" in contents[-1]
    grid = Image.open(io.BytesIO(final.attachments[0].data))
    assert grid.format == "PNG" and grid.size == (512, 512)
    labels = [c.get("label") for row in final.components for c in row["components"]]
    assert labels[:8] == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
    assert any("%" in text for text in contents), "a progress edit with a percentage"
    progress_edits = [at for at, payload in progress.edits[1:-1]]
    gaps = [b - a for a, b in itertools.pairwise(progress_edits)]
    assert all(gap >= TEST_EDIT_INTERVAL_S * 0.9 for gap in gaps), gaps
    assert not emu.internal_errors
