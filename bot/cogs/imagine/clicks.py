"""What a click on a job's button does: upscale, vary, reroll, cancel.

Every click gets an answer. A click is acted on once per job, action and user (a
double click, or a click repeated after a restart, points at the job the first one
made); someone else's job follows the guild's ``others_may_press`` (cancel is the
owner's or an admin's); a purged job, a job whose images are gone and a forged
custom id each get a polite ephemeral message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
import structlog

from backend.models import Job
from backend.service import JobKind, JobView
from bot import render
from bot.buttons import Click
from bot.errors import NotAllowedError, reply_error, send_ephemeral
from bot.posting import start_job
from bot.render import Action

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = structlog.get_logger(__name__)

_KINDS = {
    Action.UPSCALE: JobKind.UPSCALE,
    Action.VARIATION: JobKind.VARIATION,
    Action.REROLL: JobKind.REROLL,
}


class ClickHandler:
    """Answers the persistent buttons' clicks."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def on_click(self, interaction: discord.Interaction[Any], click: Click) -> None:
        """Act on ``click``; any failure becomes one ephemeral message."""
        try:
            await self._handle(interaction, click)
        except Exception as exc:
            await reply_error(interaction, exc, job_id=click.job_id or None)

    async def _handle(self, interaction: discord.Interaction[Any], click: Click) -> None:
        if click.action is None:
            log.warning("click_forged", custom_id=click.raw[:100], user_id=interaction.user.id)
            await send_ephemeral(interaction, "This button is not one I made; nothing was done.")
            return
        await self.bot.deps.community.check_user(interaction.user.id)
        view = await self.bot.deps.service.job(click.job_id)
        if view is None:
            await send_ephemeral(
                interaction, "That job is no longer stored (it was purged); start a new one."
            )
            return
        if click.action is Action.CANCEL:
            await self._cancel(interaction, view)
            return
        self._check_may_press(interaction, view)
        await self._derive(interaction, view, click)

    def _check_may_press(self, interaction: discord.Interaction[Any], view: JobView) -> None:
        user = interaction.user
        if user.id == view.user_id or self.bot.is_admin(user):
            return
        if not self.bot.guild_settings(interaction.guild_id).others_may_press:
            raise NotAllowedError(
                "Only the person who made this job can use its buttons here; "
                "start your own with /imagine."
            )

    async def _cancel(self, interaction: discord.Interaction[Any], view: JobView) -> None:
        user = interaction.user
        if user.id != view.user_id and not self.bot.is_admin(user):
            raise NotAllowedError("Only the person who started this job can cancel it.")
        stopped = await self.bot.deps.service.cancel(view.id)
        text = "Cancelling the job." if stopped else f"The job has already ended ({view.state})."
        await send_ephemeral(interaction, text)

    async def _derive(
        self, interaction: discord.Interaction[Any], view: JobView, click: Click
    ) -> None:
        kind = _KINDS[click.action] if click.action is not None else JobKind.REROLL
        if kind is not JobKind.REROLL and not 1 <= click.index <= view.spec.n:
            await send_ephemeral(interaction, "This button names a sample the job does not have.")
            return
        if kind is not JobKind.REROLL and not _has_images(view):
            await send_ephemeral(
                interaction,
                "The images of this job are gone from the server's disk; use 🔄 to make new ones.",
            )
            return
        community, service = self.bot.deps.community, self.bot.deps.service
        user = interaction.user
        action = f"{click.action}{click.index}"
        preferences = (await community.account(user.id)).preferences
        claimed: list[str] = []

        async def submit(job_id: str) -> Job:
            first = await community.claim_click(view.id, action, user.id, job_id)
            if first != job_id:
                claimed.append(first)
                raise _AlreadyDone(first)
            try:
                return await service.derive(
                    view.id,
                    kind,
                    user_id=user.id,
                    index=click.index - 1 if kind is not JobKind.REROLL else None,
                    job_id=job_id,
                    role_tier=self.bot.role_tier(user),
                )
            except BaseException:
                await community.release_click(view.id, action, user.id)
                raise

        link = await self._parent_link(view)
        try:
            await start_job(
                self.bot, interaction, submit, private=preferences.private, parent_link=link
            )
        except _AlreadyDone as done:
            await send_ephemeral(
                interaction, f"Already on it: this button made job `{done.job_id}` before."
            )

    async def _parent_link(self, view: JobView) -> str | None:
        delivery = await self.bot.deps.community.delivery(view.id)
        if delivery is None or delivery.channel_id is None or delivery.message_id is None:
            return None
        return render.message_link(view.guild_id, delivery.channel_id, delivery.message_id)


def _has_images(view: JobView) -> bool:
    return bool(view.images) and all(Path(path).is_file() for path in view.images)


class _AlreadyDone(Exception):
    """The same user pressed the same button before; ``job_id`` is what it made."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id
