"""End to end: what Discord and the host throw at the bot mid-job, and the result still
arrives: 429 storms, 500s, a dropped gateway, an expired interaction token, a restart."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from backend.models import Lane
from config.settings import Settings
from tests.bot.conftest import RunningBot, expire_delivery, imagine, job_of, running_bot
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow


async def _start(run: RunningBot, prompt: str, user: str = "alice") -> tuple[str, int]:
    """Run /imagine; the job id and the progress message's id."""
    progress = await imagine(run, user, prompt)
    return job_of(progress), progress.id


async def test_a_storm_of_429s_slows_progress_edits_but_the_result_arrives(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """Every webhook edit answered 429 (Via header, retry_after 0.3 s) twenty times over:
    discord.py waits them out, and the grid still lands on the progress message."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        emu.rate_limit("PATCH", r"/webhooks/.*", times=20, retry_after_s=0.3)
        job_id, message_id = await _start(run, "a red circle on a white background")
        final = await run.final_message(job_id, timeout_s=60)
    assert final.id == message_id and final.attachments
    assert sum(1 for r in emu.requests if r.status == 429) == 20


async def test_server_errors_and_a_dropped_gateway_do_not_lose_the_result(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """Two 500s on the final edit and a gateway dropped mid-job: the client resumes its
    session, the edit is retried, the result arrives, and the next command still works."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        await run.bot.deps.operations.pause(Lane.REALTIME, 0)  # type: ignore[union-attr]
        job_id, _message = await _start(run, "a blue square on a yellow background")
        await emu.drop_gateway()
        emu.fail("PATCH", r"/webhooks/.*", status=500, times=2)
        await run.bot.deps.operations.resume(Lane.REALTIME, 0)  # type: ignore[union-attr]
        await run.final_message(job_id)
        again, _ = await _start(run, "a green star on a black background")
        await run.final_message(again)
    assert emu.gateway_stats.resumes >= 1
    assert sum(1 for r in emu.requests if r.status == 500) == 2


async def test_a_job_that_outlives_its_token_arrives_as_a_channel_message(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """Past the 15-minute token the grid is posted with the bot's own token, buttons and
    all, and the progress message points at it."""
    emu = discord_emulator
    async with running_bot(emu, bot_env(emu)) as run:
        await run.bot.deps.operations.pause(Lane.REALTIME, 0)  # type: ignore[union-attr]
        job_id, message_id = await _start(run, "a white circle on a red background")
        emu.expire_interaction_tokens()
        await expire_delivery(run, job_id)
        await run.bot.deps.operations.resume(Lane.REALTIME, 0)  # type: ignore[union-attr]
        final = await run.final_message(job_id)
        progress = await emu.wait_for_message(
            lambda m: m.id == message_id and "see the result" in m.content, timeout_s=10
        )
    assert final.id != message_id and final.channel_id == emu.channel.id
    assert final.interaction_token is None and str(final.id) in progress.content


async def test_a_restarted_bot_delivers_the_job_and_old_buttons_still_work(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """A bot stopped while a job waits, started again on the same data directory,
    delivers that job to its message, and a button of a result from before the restart
    works."""
    emu = discord_emulator
    settings = bot_env(emu)
    async with running_bot(emu, settings) as run:
        before, _ = await _start(run, "a red square on a white background")
        old = await run.final_message(before)
        await run.bot.deps.operations.pause(Lane.REALTIME, 0)  # type: ignore[union-attr]
        pending, message_id = await _start(run, "a blue circle on a black background")
    async with running_bot(emu, settings) as run:
        assert run.backend.paused_lanes == {Lane.REALTIME}, "pauses survive a restart"
        await run.bot.deps.operations.resume(Lane.REALTIME, 0)  # type: ignore[union-attr]
        final = await run.final_message(pending)
        assert final.id == message_id
        ix = await emu.click(emu.users["alice"], old, f"im:v:3:{before}")
        await ix.wait_response(timeout_s=5)
        vary = ix.original()
        assert vary is not None and "Variation of" in vary.content
        await run.final_message(job_of(vary))


async def test_a_preempted_job_says_paused_and_still_finishes(
    discord_emulator: DiscordEmulator, bot_env: Callable[..., Settings]
) -> None:
    """A long batch job on a device that holds one job at a time is preempted by a short
    realtime one: its message says a faster job took the GPU, and both results arrive."""
    emu = discord_emulator
    settings = bot_env(emu, engine={"max_batch_rows": 8}, scheduler={"realtime_max_cost_s": 1.0})
    async with running_bot(emu, settings) as run:
        long_id, long_message = await _start(run, "a red star on a white background --steps 150")
        await emu.wait_for_message(
            lambda m: m.id == long_message and "%" in m.content, timeout_s=30
        )
        short_id, _ = await _start(run, "a blue circle on a black background", user="bob")
        await emu.wait_for_message(
            lambda m: m.id == long_message and "a faster job took the GPU" in m.content,
            timeout_s=30,
        )
        await run.final_message(short_id)
        await run.final_message(long_id)
