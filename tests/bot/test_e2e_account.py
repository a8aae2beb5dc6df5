"""End to end: a user's own commands (/settings, /info, /queue, /cancel, /show) and
private results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from backend.models import JobState, Lane
from config.settings import Settings
from tests.bot.conftest import answer, command, expire_delivery, job_of, running_bot
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow


async def test_settings_apply_to_later_prompts_with_typed_flags_winning(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """/settings keeps a suffix and an aspect ratio; the next /imagine gets both, but a
    --ar typed in the prompt wins; the answers are ephemeral."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        ix = await command(run, "alice", "settings", aspect="16:9", suffix="on a white background")
        assert ix.ephemeral and "16:9" in answer(ix) and "on a white background" in answer(ix)
        await command(run, "alice", "imagine", prompt="a red circle")
        await command(run, "alice", "imagine", prompt="a red circle --ar 1:1")
        rows = await run.backend.db.jobs.list_for_user(emu.users["alice"].id)
        specs = [await run.backend.service.job(row.id) for row in reversed(rows)]
    first, second = (view.spec for view in specs if view is not None)
    assert first.prompt == "a red circle on a white background" and first.aspect == (16, 9)
    assert second.aspect == (1, 1)


async def test_info_queue_cancel_and_show(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """With the lane paused, /queue lists the user's queued job with its position and a
    cancel button, /info shows tier and fast time, /cancel stops it (its message says
    cancelled), and /show re-posts a finished job with live buttons; another user's or a
    made-up id is refused."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        done = await command(run, "alice", "imagine", prompt="a blue circle on a white background")
        done_id = job_of(done.original())  # type: ignore[arg-type]
        await run.final_message(done_id)
        await run.bot.deps.operations.pause(Lane.REALTIME, 0)  # type: ignore[union-attr]
        waiting = await command(
            run, "alice", "imagine", prompt="a red square on a black background"
        )
        job_id = job_of(waiting.original())  # type: ignore[arg-type]
        queue = await command(run, "alice", "queue")
        assert job_id in answer(queue) and "position 1" in answer(queue)
        assert any(job_id in c for c in queue.original().custom_ids())  # type: ignore[union-attr]
        info = await command(run, "alice", "info")
        assert "**Tier** free" in answer(info) and "min left" in answer(info)
        cancel = await command(run, "alice", "cancel", job=job_id)
        assert "Cancelling" in answer(cancel)
        await emu.wait_for_message(
            lambda m: m.id == waiting.original().id and "cancelled" in m.content,  # type: ignore[union-attr]
            timeout_s=10,
        )
        view = await run.backend.service.job(job_id)
        assert view is not None and view.state is JobState.CANCELLED
        show = await command(run, "alice", "show", job_id=done_id)
        assert show.original().attachments and any(  # type: ignore[union-attr]
            c.startswith("im:u:1:")
            for c in show.original().custom_ids()  # type: ignore[union-attr]
        )
        theirs = await command(run, "bob", "show", job_id=done_id)
        made_up = await command(run, "alice", "show", job_id="0" * 32)
    assert "I know no job" in answer(theirs) and theirs.ephemeral
    assert "I know no job" in answer(made_up)


async def test_private_results_go_to_the_requester_only(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """With private results on, the progress message and the grid are ephemeral to the
    requester; after the token expired the result arrives by DM, and with DMs closed as a
    note at the user's next command."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        alice = emu.users["alice"]
        await command(run, "alice", "settings", private=True)
        ix = await command(run, "alice", "imagine", prompt="a yellow circle on a blue background")
        progress = ix.original()
        assert progress is not None and progress.ephemeral_to == alice.id
        job_id = job_of(progress)
        final = await run.final_message(job_id)
        assert final.ephemeral_to == alice.id
        # The token expires while the next job waits: the result comes as a DM.
        await run.bot.deps.operations.pause(Lane.REALTIME, 0)  # type: ignore[union-attr]
        later = await command(run, "alice", "imagine", prompt="a red star on a white background")
        later_id = job_of(later.original())  # type: ignore[arg-type]
        emu.expire_interaction_tokens()
        await expire_delivery(run, later_id)
        await run.bot.deps.operations.resume(Lane.REALTIME, 0)  # type: ignore[union-attr]
        dm = await run.final_message(later_id)
        assert dm.channel_id == emu.dm_channel(alice).id
        # DMs closed: a note at the next command, never a lost result.
        emu.close_dms(alice)
        await run.bot.deps.operations.pause(Lane.REALTIME, 0)  # type: ignore[union-attr]
        third = await command(
            run, "alice", "imagine", prompt="a green square on a black background"
        )
        third_id = job_of(third.original())  # type: ignore[arg-type]
        emu.expire_interaction_tokens()
        await expire_delivery(run, third_id)
        await run.bot.deps.operations.resume(Lane.REALTIME, 0)  # type: ignore[union-attr]
        for _ in range(100):
            delivery = await run.bot.deps.community.delivery(third_id)
            if delivery is not None and delivery.delivered:
                break
            await asyncio.sleep(0.1)
        info = await command(run, "alice", "info")
        await emu.wait_until(lambda: bool(info.followups), what="the note")
    assert f"/show {third_id}" in answer(info)


async def test_tiers_come_from_roles_and_an_assignment_wins(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """A member with a role mapped to pro runs as pro; an admin's assignment (basic)
    wins over the role; a role an admin holds counts for /admin too."""
    emu = discord_emulator
    pro = emu.guild.add_role("pro")
    mods = emu.guild.add_role("mods")
    carol = emu.add_user("carol")
    emu.users["carol"] = carol
    emu.guild.add_member(carol, roles=[pro, mods])
    guild = {"role_tiers": {str(pro.id): "pro"}, "admin_roles": [mods.id]}
    settings = bot_env(emu, bot={"guilds": {str(emu.guild.id): guild}})
    async with running_bot(emu, settings) as run:
        assert "**Tier** pro" in answer(await command(run, "carol", "info"))
        bob = emu.users["bob"]
        await command(run, "carol", "admin tier set", user=bob, tier="basic")
        assert "**Tier** basic (assigned)" in answer(await command(run, "bob", "info"))
        await command(run, "admin", "admin tier set", user=carol, tier="basic")
        assert "**Tier** basic (assigned)" in answer(await command(run, "carol", "info"))


async def test_the_guild_default_speed_applies_when_nobody_names_one(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """With the guild's default speed relax, a plain prompt runs relaxed; --fast typed in
    the prompt and a user's own default both win over it."""
    emu = discord_emulator
    settings = bot_env(emu, bot={"guild_defaults": {"default_speed": "relax"}})
    async with running_bot(emu, settings) as run:
        await command(run, "alice", "imagine", prompt="a red circle")
        await command(run, "alice", "imagine", prompt="a red circle --fast")
        await command(run, "bob", "settings", speed="fast")
        await command(run, "bob", "imagine", prompt="a red circle")
        service = run.backend.service
        alice = [
            await service.job(r.id)
            for r in await run.backend.db.jobs.list_for_user(emu.users["alice"].id)
        ]
        bob = [
            await service.job(r.id)
            for r in await run.backend.db.jobs.list_for_user(emu.users["bob"].id)
        ]
    speeds = sorted(view.spec.speed.value for view in alice if view and view.spec.speed)
    assert speeds == ["fast", "relax"]
    assert [view.spec.speed.value for view in bob if view and view.spec.speed] == ["fast"]
