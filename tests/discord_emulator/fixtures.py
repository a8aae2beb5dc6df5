"""The ``discord_emulator`` pytest fixture: a started emulator with a small world."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.discord_emulator.control import load_world
from tests.discord_emulator.server import DiscordEmulator

TOKEN = "test-token"
DEFAULT_WORLD = {
    "users": ["admin", "alice", "bob"],
    "guilds": [
        {
            "name": "test guild",
            "owner": "admin",
            "channels": ["general"],
            "members": ["alice", "bob"],
        }
    ],
}


@pytest.fixture
async def discord_emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator (token "test-token") with guild "test guild", channel "general",
    users alice and bob and the owner admin; discord.py points at it until the test ends.

    ``emu.guild``, ``emu.channel`` and ``emu.users["alice"]`` reach the world.
    """
    emulator = DiscordEmulator(TOKEN)
    load_world(emulator, DEFAULT_WORLD)
    await emulator.start()
    try:
        with emulator.patch_discord():
            yield emulator
    finally:
        await emulator.close()
