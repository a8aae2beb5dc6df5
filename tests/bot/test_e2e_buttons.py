"""End to end: the buttons under a result, pressed the ways users press them."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from config.settings import Settings
from tests.bot.conftest import RunningBot, imagine, job_of, running_bot
from tests.discord_emulator.messages import Message
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow


async def _imagine(run: RunningBot, user_name: str, prompt: str) -> tuple[str, Message]:
    job_id = job_of(await imagine(run, user_name, prompt))
    return job_id, await run.final_message(job_id)


async def _press(run: RunningBot, user_name: str, message: Message, custom_id: str) -> str:
    """Click and return the text of the answer (the response, or its first follow-up)."""
    ix = await run.emu.click(run.emu.users[user_name], message, custom_id)
    await ix.wait_response(timeout_s=5)
    original = ix.original()
    texts = [m.content for m in ix.followups]
    if original is not None and original.id != message.id:
        texts.insert(0, original.content)
    if ix.response_data and ix.response_data.get("content"):
        texts.insert(0, ix.response_data["content"])
    return "\n".join(texts)


async def test_upscale_and_variation_post_their_own_messages_linked_to_the_parent(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """U2 makes a one-sample job twice the size; V1 makes four; each posts its own progress
    message that links to the parent and ends with its own grid."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        parent, grid = await _imagine(run, "alice", "a blue square on a yellow background")
        ix = await emu.click(emu.users["alice"], grid, f"im:u:2:{parent}")
        await ix.wait_response(timeout_s=5)
        upscale = ix.original()
        assert upscale is not None and upscale.id != grid.id
        assert "Upscale of" in upscale.content and str(grid.id) in upscale.content
        up_id = job_of(upscale)
        up_final = await run.final_message(up_id)
        ix = await emu.click(emu.users["alice"], grid, f"im:v:1:{parent}")
        await ix.wait_response(timeout_s=5)
        vary = ix.original()
        assert vary is not None and "Variation of" in vary.content
    up_grid = Image.open(io.BytesIO(up_final.attachments[0].data))
    assert up_grid.size == (256, 256), "one 64 px sample shown as one 256 px tile"
    assert [c for c in up_final.custom_ids() if not c.startswith("im:r:")] == [f"im:v:1:{up_id}"]


async def test_a_double_click_makes_one_job_and_a_reroll_keeps_the_prompt(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """The same user pressing reroll twice gets one new job; the second press names it."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        parent, grid = await _imagine(run, "alice", "a green star on a black background --seed 5")
        first = await emu.click(emu.users["alice"], grid, f"im:r:0:{parent}")
        second = await emu.click(emu.users["alice"], grid, f"im:r:0:{parent}")
        await first.wait_response(timeout_s=5)
        await second.wait_response(timeout_s=5)
        made = [ix.original() for ix in (first, second) if ix.original() is not None]
        progress = [m for m in made if m.custom_ids()]
        assert len(progress) == 1, "one progress message for two presses"
        assert "Reroll of" in progress[0].content and "a green star" in progress[0].content
        answers = "\n".join(m.content for ix in (first, second) for m in ix.followups)
        answers += "\n".join((ix.response_data or {}).get("content", "") for ix in (first, second))
        assert "Already on it" in answers
        rows = await run.backend.db.jobs.list_for_user(emu.users["alice"].id)
        assert len(rows) == 2


async def test_others_buttons_follow_the_guild_setting_and_cancel_stays_the_owners(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """With others_may_press off, bob is refused politely on alice's U1 and no job is made."""
    emu = discord_emulator
    settings = bot_env(emu, bot={"guild_defaults": {"others_may_press": False}})
    async with running_bot(emu, settings) as run:
        parent, grid = await _imagine(run, "alice", "a red triangle on a white background")
        text = await _press(run, "bob", grid, f"im:u:1:{parent}")
        assert "Only the person who made this job" in text
        rows = await run.backend.db.jobs.list_for_user(emu.users["bob"].id)
        assert rows == []


async def test_forged_purged_and_imageless_clicks_get_polite_answers(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """A forged custom id, a job no longer stored and a job whose files were deleted each
    get an ephemeral explanation, and the bot keeps working."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        parent, grid = await _imagine(run, "alice", "a white circle on a blue background")
        button = grid.components[0]["components"][0]
        button["custom_id"] = "im:z:9:not-a-job"
        text = await _press(run, "alice", grid, "im:z:9:not-a-job")
        assert "not one I made" in text
        button["custom_id"] = f"im:u:1:{'f' * 32}"
        text = await _press(run, "alice", grid, f"im:u:1:{'f' * 32}")
        assert "no longer stored" in text
        view = await run.backend.service.job(parent)
        assert view is not None
        for path in view.images:
            Path(path).unlink()
        text = await _press(run, "alice", grid, f"im:v:2:{parent}")
        assert "gone from the server's disk" in text
        job_id, _final = await _imagine(run, "alice", "a black square on a white background")
        assert job_id
    assert all(ix.responded for ix in emu.interactions)


async def test_an_internal_error_shows_the_user_an_id_and_the_bot_goes_on(
    discord_emulator: DiscordEmulator,
    bot_env: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A click whose handler fails unexpectedly gets one ephemeral line with the job's id
    (also in the log); the next command works."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        parent, grid = await _imagine(run, "alice", "a pink star on a black background")
        service = run.bot.deps.service

        async def broken(_job_id: str) -> None:
            raise RuntimeError("the database went away")

        monkeypatch.setattr(service, "job", broken)
        text = await _press(run, "alice", grid, f"im:v:1:{parent}")
        assert f"error id `{parent}`" in text
        monkeypatch.undo()
        job_id, _final = await _imagine(run, "alice", "a white square on a black background")
        assert job_id
