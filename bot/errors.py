"""The bot's own refusals, and the one handler that turns any error into what a user
sees: one ephemeral message.

:func:`describe` decides the text, in this order: the bot's refusals (wrong channel,
not allowed, unknown job), a ban, a banned word, a bad flag, a rate or queue limit
(with when to retry, as a Discord relative timestamp), a failed job, any other bad
input, the queue being unreachable, Discord's own permission checks; anything else is an
internal error, logged with an id the user is shown. :func:`reply_error` sends it the
way the interaction still allows, and never raises.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import discord
import structlog
from discord import app_commands

from backend.errors import (
    BadInputError,
    BannedUserError,
    BannedWordError,
    JobFailedError,
    PromptError,
    QueueUnavailableError,
    RefusedError,
)
from bot.render import relative_time

log = structlog.get_logger(__name__)


class BotError(Exception):
    """Root of the bot's own refusals; ``message`` is what the user reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotHereError(BotError):
    """The command is not allowed in this channel; the message names where it is."""

    def __init__(self, channel_ids: tuple[int, ...]) -> None:
        self.channel_ids = channel_ids
        where = ", ".join(f"<#{channel}>" for channel in channel_ids)
        super().__init__(f"/imagine works only in {where} on this server; try there")


class NotAllowedError(BotError):
    """The user may not do this (an admin command, someone else's job)."""


class UnknownJobError(BotError):
    """No job the user may see has this id (made up, purged, or someone else's)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"I know no job `{job_id[:40]}` of yours; check the id with /queue")


class AdminOnlyError(app_commands.CheckFailure):
    """An admin command used by someone who is not an admin (raised from the admin
    cog's check, which discord.py hands to the tree's error handler)."""

    def __init__(self) -> None:
        self.message = (
            "Admin commands need the Manage Server permission or one of this server's admin roles."
        )
        super().__init__(self.message)


def describe(error: BaseException) -> tuple[str, bool]:
    """What the user reads for ``error``, and whether it is an internal error."""
    if isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError):
        error = error.__cause__ or error
    if isinstance(error, BotError | AdminOnlyError):
        return error.message, False
    if isinstance(error, BannedUserError | BannedWordError):
        return error.message, False
    if isinstance(error, PromptError):
        return f"Bad prompt: {error.message}", False
    if isinstance(error, RefusedError):
        return _refusal(error), False
    if isinstance(error, JobFailedError):
        return f"The job failed: {error.reason} (job `{error.job_id}`)", False
    if isinstance(error, BadInputError):
        return error.message, False
    if isinstance(error, QueueUnavailableError):
        return "The job queue cannot be reached right now; try again in a minute.", False
    if isinstance(error, app_commands.MissingPermissions | app_commands.CheckFailure):
        return "You are not allowed to use this command.", False
    return "", True


def _refusal(error: RefusedError) -> str:
    if error.retry_after_s is None:
        return f"Queue limit: {error.limit}. Try again when one of your jobs finishes."
    when = relative_time(time.time() + error.retry_after_s)
    return f"Rate limited: {error.limit}. Try again {when}."


async def reply_error(
    interaction: discord.Interaction[Any], error: BaseException, *, job_id: str | None = None
) -> None:
    """Tell the user, ephemerally, what went wrong; internal errors are logged with an id
    (the job's when known) that the user is shown. Never raises."""
    text, internal = describe(error)
    if internal:
        error_id = job_id or uuid.uuid4().hex[:12]
        log.error(
            "bot_handler_failed",
            error_id=error_id,
            job_id=job_id,
            command=_command_name(interaction),
            user_id=interaction.user.id,
            exc_info=error,
        )
        text = f"Something went wrong on my side (error id `{error_id}`); it was logged."
    else:
        log.info("bot_refused", user_id=interaction.user.id, reason=text[:200])
    await send_ephemeral(interaction, text)


async def send_ephemeral(interaction: discord.Interaction[Any], text: str) -> None:
    """An ephemeral message through the interaction's response, or a follow-up once it
    was answered; failures are logged, never raised."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("bot_reply_failed", status=exc.status, code=exc.code, text=text[:100])


def _command_name(interaction: discord.Interaction[Any]) -> str | None:
    command = interaction.command
    return command.qualified_name if command is not None else None
