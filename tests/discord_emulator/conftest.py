"""Fixtures of the emulator's own tests: the emulator and a logged-in sample bot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest

from tests.discord_emulator.fixtures import TOKEN, discord_emulator
from tests.discord_emulator.sample_bot import SampleBot
from tests.discord_emulator.server import DiscordEmulator

__all__ = ["bot", "discord_emulator", "start_bot", "stop_bot"]


async def start_bot(bot: discord.Client, token: str = TOKEN) -> asyncio.Task[None]:
    """Start the client and wait for READY; raises what `start` raised if it failed first."""
    task = asyncio.create_task(bot.start(token))
    ready = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
        raise AssertionError("the client stopped before READY")
    if ready not in done:
        raise AssertionError("no READY within 10 s")
    return task


async def stop_bot(bot: discord.Client, task: asyncio.Task[None]) -> None:
    """Close the client and reap its task; re-raises what killed it (e.g. a parser KeyError)."""
    died = task.done()
    await bot.close()
    if died:
        task.result()
        raise AssertionError("the client stopped before the test ended")
    await asyncio.wait_for(task, timeout=5)


@pytest.fixture
async def bot(discord_emulator: DiscordEmulator) -> AsyncIterator[SampleBot]:
    """The sample bot logged in against the emulator, its guild commands synced."""
    client = SampleBot(discord_emulator.guild.id)
    task = await start_bot(client)
    try:
        await client.tree.sync(guild=discord.Object(discord_emulator.guild.id))
        yield client
    finally:
        await stop_bot(client, task)
    assert discord_emulator.internal_errors == []
