"""The bot running in this process against the Discord emulator, over a real backend
(SQLite, the memory queue, a CPU worker and a real model)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from backend.app import Backend, open_backend
from backend.community import Community
from backend.operations import Operations
from bot.assemble import build_bot
from bot.client import BotDeps, ImagineBot
from config.settings import Settings, load_settings
from tests.discord_emulator.interactions import Interaction
from tests.discord_emulator.messages import Message
from tests.discord_emulator.server import DiscordEmulator

# Short enough for tests to see several edits per job, long enough to coalesce.
TEST_EDIT_INTERVAL_S = 0.3


@dataclass
class RunningBot:
    """The emulator, the bot and the backend under it."""

    emu: DiscordEmulator
    bot: ImagineBot
    backend: Backend
    settings: Settings

    async def final_message(self, job_id: str, timeout_s: float = 60.0) -> Message:
        """The message that carries the job's finished grid (an attachment and buttons)."""
        return await self.emu.wait_for_message(
            lambda m: (
                bool(m.attachments)
                and any(job_id in cid for cid in m.custom_ids())
                and any(cid.startswith("im:r:") for cid in m.custom_ids())
            ),
            timeout_s=timeout_s,
        )


def answer(ix: Interaction) -> str:
    """Everything the bot said to one interaction: the response, the message it made
    and its follow-ups, in order."""
    texts = [(ix.response_data or {}).get("content") or ""]
    original = ix.original()
    if original is not None:
        texts.append(original.content)
    texts += [m.content for m in ix.followups]
    return "\n".join(text for text in texts if text)


async def command(run: RunningBot, who: str, path: str, /, **options: object) -> Interaction:
    """Run a slash command as the user called ``who``; once answered (a deferred one
    once its follow-up replaced the "thinking" message)."""
    ix = await run.emu.slash(run.emu.users[who], run.emu.channel, path, options)
    await ix.wait_response(timeout_s=5)
    original = ix.original()
    if original is not None and original.loading:
        await run.emu.wait_until(lambda: not original.loading, what="the deferred answer")
    return ix


async def imagine(run: RunningBot, who: str, prompt: str) -> Message:
    """Run /imagine as ``who``; the job's progress message."""
    ix = await command(run, who, "imagine", prompt=prompt)
    progress = ix.original()
    assert progress is not None, answer(ix)
    return progress


def job_of(message: Message) -> str:
    """The job id a progress or result message's buttons carry."""
    for custom_id in message.custom_ids():
        if custom_id.startswith(("im:x:", "im:r:")):
            return custom_id.rsplit(":", 1)[1]
    raise AssertionError(f"no job button on message {message.id}: {message.custom_ids()}")


async def expire_delivery(run: RunningBot, job_id: str) -> None:
    """Make the bot's record of the job's interaction token as expired as the
    emulator's (:meth:`DiscordEmulator.expire_interaction_tokens`)."""
    await run.backend.db.connection.execute(
        "UPDATE deliveries SET token_expires_at_ms = 0 WHERE job_id = ?", (job_id,)
    )


def bot_settings(emu: DiscordEmulator, **overrides: Any) -> Settings:
    """Settings for a bot against ``emu``: instant sync to its guild, quick edits."""
    bot = {"edit_interval_s": TEST_EDIT_INTERVAL_S, **overrides.pop("bot", {})}
    return load_settings(
        discord={"token": emu.token, "guild_ids": [emu.guild.id]}, bot=bot, **overrides
    )


@contextlib.asynccontextmanager
async def running_bot(emu: DiscordEmulator, settings: Settings) -> AsyncIterator[RunningBot]:
    """Log the bot in and connect it; on exit close it, then save running jobs."""
    async with open_backend(settings) as backend:
        community = Community(backend.db, settings.scheduler)
        deps = BotDeps(settings, backend.service, community, Operations(backend.parts()))
        bot = build_bot(deps, guild_ready_timeout_s=0.1)
        await bot.login(emu.token)
        connecting = asyncio.create_task(bot.connect(reconnect=True))
        try:
            await asyncio.wait_for(bot.wait_until_ready(), 30)
            yield RunningBot(emu, bot, backend, settings)
        finally:
            await bot.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await connecting
            # Events dispatched while closing get to run instead of dying unstarted.
            await asyncio.sleep(0.05)
            backend.interrupt()


@pytest.fixture
def bot_env(shapes_env: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings for the shipped shapes model on one CPU thread (steady under load)."""
    monkeypatch.setenv("IMAGINE_ENGINE__TORCH_THREADS", "1")
    return bot_settings
