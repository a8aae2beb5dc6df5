"""Starting a job from an interaction: acknowledge within Discord's three seconds, post
its progress message, and hand it to the deliverer.

The delivery record is written before the job is submitted, so a crash in between
leaves a record the next start delivers, never a job nobody delivers; a refused submit
removes it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import discord
import structlog

from backend.models import Job
from backend.service import JobView
from bot import render
from bot.buttons import buttons_view
from bot.render import Header

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = structlog.get_logger(__name__)

# Discord drops an interaction not answered within 3 s; a submit slower than this is
# answered with a deferral first (one more call), a faster one with its message at once.
ACK_BUDGET_S = 1.5
# Interaction tokens work for 15 minutes after the interaction was created.
TOKEN_LIFETIME = timedelta(minutes=15)


async def start_job(
    bot: ImagineBot,
    interaction: discord.Interaction[Any],
    submit: Callable[[str], Awaitable[Job]],
    *,
    private: bool,
    parent_link: str | None = None,
) -> Job:
    """Submit through ``submit`` (given the new job's id) and post the job's progress
    message as the interaction's response; returns the job. Errors propagate after any
    deferral is cleaned up, for the caller's error handler."""
    community, service = bot.deps.community, bot.deps.service
    job_id = service.new_job_id()
    expires_ms = int((interaction.created_at + TOKEN_LIFETIME).timestamp() * 1000)
    await community.follow(
        job_id,
        interaction.user.id,
        channel_id=interaction.channel_id if not private else None,
        application_id=interaction.application_id,
        interaction_token=interaction.token,
        token_expires_at_ms=expires_ms,
        private=private,
    )
    submitting = asyncio.ensure_future(submit(job_id))
    done, _pending = await asyncio.wait({submitting}, timeout=ACK_BUDGET_S)
    deferred = not done
    if deferred:
        await interaction.response.defer(thinking=True, ephemeral=private)
    try:
        job = await submitting
    except BaseException:
        await community.unfollow(job_id)
        if deferred:
            await _drop_thinking(interaction)
        raise
    view = await _post_progress(
        bot, interaction, job, private=private, deferred=deferred, parent_link=parent_link
    )
    delivery = await community.delivery(job.id)
    if view is not None and delivery is not None:
        await bot.deliveries.follow(delivery, view, parent_link)
    return job


async def _post_progress(
    bot: ImagineBot,
    interaction: discord.Interaction[Any],
    job: Job,
    *,
    private: bool,
    deferred: bool,
    parent_link: str | None,
) -> JobView | None:
    """Post the progress message; the job's view it was rendered from (None: gone)."""
    service, community = bot.deps.service, bot.deps.community
    status = await service.status(job.id)
    view = await service.job(job.id)
    header = Header.of(view, parent_link) if view is not None else None
    content = render.waiting(header, status) if header is not None else f"Job `{job.id}` queued"
    cancel = buttons_view(render.progress_buttons(), job.id)
    message_id: int | None
    if deferred:
        message = await interaction.edit_original_response(content=content, view=cancel)
        message_id = message.id
    else:
        callback = await interaction.response.send_message(content, view=cancel, ephemeral=private)
        message_id = callback.message_id if callback is not None else None
        if message_id is None:
            message_id = (await interaction.original_response()).id
    await community.progress_message_posted(
        job.id, interaction.channel_id if not private else None, message_id
    )
    log.info("progress_posted", job_id=job.id, message_id=message_id, deferred=deferred)
    return view


async def _drop_thinking(interaction: discord.Interaction[Any]) -> None:
    """Remove the public "thinking" message of a refused job, so that the refusal can
    go out ephemerally (the first follow-up would otherwise replace it, in public)."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:
        log.warning("thinking_not_removed", status=exc.status, code=exc.code)
