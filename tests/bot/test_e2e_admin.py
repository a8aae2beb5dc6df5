"""End to end: admin commands by an admin, refusals for everyone else, moderation and
admission refusals, each one ephemeral message."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from backend.degrade.ladder import Level
from backend.models import Lane
from config.settings import Settings
from tests.bot.conftest import answer, command, running_bot
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow


async def test_admin_commands_act_and_are_audited_and_others_are_refused(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """The guild owner (Manage Server) degrades, assigns a tier, bans and unbans, pauses
    and resumes a lane, reads stats and the audit log; alice is refused each time, and
    both the uses and the refusal are in the audit log."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        bob = emu.users["bob"]
        refused = await command(run, "alice", "admin degrade set", level="heavy")
        assert "Manage Server" in answer(refused) and refused.ephemeral
        assert run.backend.degrade.level is Level.NORMAL
        said = answer(await command(run, "admin", "admin degrade set", level="heavy"))
        assert "heavy" in said and run.backend.degrade.level is Level.HEAVY
        await command(run, "admin", "admin degrade clear")
        assert run.backend.degrade.level is Level.NORMAL
        assert "pro" in answer(await command(run, "admin", "admin tier set", user=bob, tier="pro"))
        assert await run.backend.service.tier_of(bob.id) == "pro"
        await command(run, "admin", "admin ban", user=bob, reason="spam")
        banned = await command(run, "bob", "imagine", prompt="a red circle")
        assert "banned" in answer(banned) and banned.ephemeral
        await command(run, "admin", "admin unban", user=bob)
        await command(run, "admin", "admin degrade set", level="medium")
        held = await command(run, "alice", "imagine", prompt="a red circle")
        await emu.wait_until(lambda: bool(held.followups), what="the degraded-mode note")
        assert "Degraded mode (level medium)" in answer(held)
        assert "free realtime jobs wait" in answer(held)
        await command(run, "admin", "admin degrade clear")
        await command(run, "admin", "admin queue pause", lane="batch")
        assert run.backend.paused_lanes == {Lane.BATCH}
        stats = answer(await command(run, "admin", "admin stats"))
        assert "**batch** (paused)" in stats and "Devices busy" in stats
        await command(run, "admin", "admin queue resume")
        assert not run.backend.paused_lanes
        audit = answer(await command(run, "admin", "admin audit", n=50))
    for action in ("admin.refused", "admin.admin degrade set", "ban", "unban", "tier.set"):
        assert action in audit, action


async def test_banned_words_are_refused_through_disguises(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """A banned word hidden by zero-width characters, Cyrillic look-alikes or dots is
    refused with a message that does not name the entry; nothing is queued."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        await command(run, "admin", "admin banned-words add", word="gore")
        assert "gore" in answer(await command(run, "admin", "admin banned-words list"))
        for prompt in ("a g\u200bore circle", "a gоrе circle", "a g.o.r.e circle", "GORE"):
            ix = await command(run, "alice", "imagine", prompt=prompt)
            assert "banned word" in answer(ix) and "gore" not in answer(ix), prompt
            assert ix.ephemeral
        assert await run.backend.db.jobs.list_for_user(emu.users["alice"].id) == []
        fine = await command(run, "alice", "imagine", prompt="a gorgeous red circle")
        assert fine.original() is not None and not fine.ephemeral


async def test_bad_input_and_limits_get_one_clear_ephemeral_message(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """A bad flag names the flag and its form; a prompt of only flags and one of 6,000
    characters (the most a Discord option carries) are refused; the free tier's queue
    limit says when a job can be queued again."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        bad = answer(await command(run, "alice", "imagine", prompt="a cat --ar banana"))
        assert "--ar" in bad and "Bad prompt" in bad
        only_flags = answer(await command(run, "alice", "imagine", prompt="--seed 3 --fast"))
        assert "Bad prompt" in only_flags
        huge = answer(await command(run, "alice", "imagine", prompt="word " * 1199))
        assert "characters" in huge
        await run.bot.deps.operations.pause(None, 0)  # type: ignore[union-attr]
        first = await command(run, "alice", "imagine", prompt="a red circle --seed 0")
        await emu.wait_until(lambda: bool(first.followups), what="the paused-lane note")
        assert "paused for realtime jobs by an admin" in answer(first)
        answers = [
            answer(await command(run, "alice", "imagine", prompt=f"a red circle --seed {n}"))
            for n in range(1, 6)
        ]
        assert "Queue limit" in answers[-1] and "when one of your jobs finishes" in answers[-1]
    assert not any("Something went wrong" in text for text in (bad, only_flags, huge))


async def test_a_rate_limit_says_when_to_retry_as_a_discord_timestamp(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """Past the guild's rate the refusal names the limit and a relative timestamp."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu, admission={"guild_per_min": 2})) as run:
        answers = [
            answer(await command(run, "alice", "imagine", prompt=f"a red circle --seed {n}"))
            for n in range(3)
        ]
    assert "Rate limited" in answers[-1] and re.search(r"<t:\d+:R>", answers[-1])


async def test_imagine_outside_the_allowed_channels_names_where_to_go(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """With allowed channels set, /imagine elsewhere is refused with a link to them."""
    emu = discord_emulator
    art = emu.guild.add_channel("art")
    settings = bot_env(emu, bot={"guilds": {str(emu.guild.id): {"allowed_channels": [art.id]}}})
    async with running_bot(emu, settings) as run:
        ix = await command(run, "alice", "imagine", prompt="a red circle")
        assert f"<#{art.id}>" in answer(ix) and ix.ephemeral
        there = await emu.slash(emu.users["alice"], art, "imagine", {"prompt": "a red circle"})
        await there.wait_response(timeout_s=5)
        assert there.original() is not None and not there.ephemeral


async def test_purge_tells_each_user_and_models_load_and_unload(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """Purging a paused lane cancels every queued job, each message saying cancelled;
    a model loads and unloads on the device; a tier for a non-member is refused."""
    emu = discord_emulator
    outsider = emu.add_user("outsider")
    async with running_bot(emu, bot_env(emu)) as run:
        await command(run, "admin", "admin queue pause")
        waiting = [
            await command(run, who, "imagine", prompt="a red circle on a white background")
            for who in ("alice", "bob")
        ]
        said = answer(await command(run, "admin", "admin queue purge"))
        assert "Cancelled 2 queued jobs of 2 users" in said
        for ix in waiting:
            message = ix.original()
            assert message is not None
            await emu.wait_for_message(
                lambda m, mid=message.id: m.id == mid and "cancelled" in m.content, timeout_s=10
            )
        loaded = answer(await command(run, "admin", "admin model load", name="tiny"))
        assert "`tiny` loaded on cpu" in loaded
        assert "tiny" in answer(await command(run, "admin", "admin stats"))
        assert "unloaded from cpu" in answer(
            await command(run, "admin", "admin model unload", name="tiny")
        )
        unknown = answer(await command(run, "admin", "admin model load", name="nope"))
        assert "unknown model 'nope'" in unknown
        refused = answer(await command(run, "admin", "admin tier set", user=outsider, tier="pro"))
        assert "not a member of this server" in refused
