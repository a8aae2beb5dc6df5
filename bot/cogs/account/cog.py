"""A user's own commands: ``/settings``, ``/info``, ``/queue``, ``/cancel``, ``/show``."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from backend.community import Preferences
from backend.errors import BadInputError
from backend.models import JobState, Speed
from backend.service import JobView
from bot import render
from bot.buttons import buttons_view
from bot.cogs.imagine.cog import ASPECTS, SPEEDS
from bot.errors import UnknownJobError
from bot.render import ButtonSpec, Header

if TYPE_CHECKING:
    from bot.client import ImagineBot

# Jobs /queue lists (Discord allows 25 buttons per message; one cancel button each).
QUEUE_SHOWN = 10


class AccountCog(commands.Cog):
    """Per-user settings, status, own jobs."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Your defaults for every /imagine")
    @app_commands.describe(
        speed="Default lane",
        aspect="Default aspect ratio",
        private="Send your results to you only",
        suffix="Text (and flags) added to every prompt; flags you type still win",
        reset="Forget all your settings",
    )
    @app_commands.choices(speed=SPEEDS, aspect=ASPECTS)
    async def settings(
        self,
        interaction: discord.Interaction[Any],
        speed: str | None = None,
        aspect: str | None = None,
        private: bool | None = None,
        suffix: str | None = None,
        reset: bool = False,
    ) -> None:
        """Change the given settings (none given: show them)."""
        community = self.bot.deps.community
        await community.check_user(interaction.user.id)
        current = (await community.account(interaction.user.id)).preferences
        if reset:
            current = Preferences()
        changed = replace(
            current,
            speed=Speed(speed) if speed is not None else current.speed,
            aspect=aspect if aspect is not None else current.aspect,
            private=private if private is not None else current.private,
            suffix=suffix.strip() if suffix is not None else current.suffix,
        )
        if changed != current or reset:
            await community.set_preferences(interaction.user.id, changed)
        await interaction.response.send_message(_describe(changed), ephemeral=True)

    @app_commands.command(name="info", description="Your tier, fast time left and your jobs")
    async def info(self, interaction: discord.Interaction[Any]) -> None:
        """Tier, this month's fast budget, own active jobs, the service's state."""
        bot, user = self.bot, interaction.user
        await bot.deps.community.check_user(user.id)
        service = bot.deps.service
        tier = await service.tier_of(user.id, bot.role_tier(user))
        account = await bot.deps.community.account(user.id)
        budget = bot.deps.community.fast_budget_s(tier)
        used_min = account.fast_used_s / 60
        if budget is None:
            fast = f"{used_min:.1f} min used this month (no limit)"
        else:
            left = max(0.0, budget - account.fast_used_s) / 60
            fast = f"{used_min:.1f} of {budget / 60:.0f} min used this month, {left:.1f} min left"
        lines = [
            f"**Tier** {tier}" + (" (assigned)" if account.assigned_tier else ""),
            f"**Fast time** {fast}",
            f"**Service** degradation level {service.restrictions().level.value}",
            "**Your jobs**",
        ]
        lines += await self._job_lines(await self._active_jobs(user.id)) or [
            "none queued or running"
        ]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command(name="queue", description="Your queued and running jobs")
    async def queue(self, interaction: discord.Interaction[Any]) -> None:
        """Own active jobs with their places, a cancel button each."""
        await self.bot.deps.community.check_user(interaction.user.id)
        jobs = await self._active_jobs(interaction.user.id)
        if not jobs:
            await interaction.response.send_message(
                "You have no queued or running jobs.", ephemeral=True
            )
            return
        lines = await self._job_lines(jobs)
        view = discord.ui.View(timeout=None)
        for number, job in enumerate(jobs):
            spec = ButtonSpec(render.Action.CANCEL, 0, f"Cancel {number + 1}", number // 5, "✖")
            for item in buttons_view([spec], job.id).children:
                view.add_item(item)
        view.stop()
        await interaction.response.send_message("\n".join(lines), view=view, ephemeral=True)

    @app_commands.command(
        name="cancel", description="Cancel one of your jobs (default: the newest)"
    )
    @app_commands.describe(job="The job's id (from /queue); default: your newest active job")
    async def cancel(self, interaction: discord.Interaction[Any], job: str | None = None) -> None:
        """Cancel the given, or the newest active, job of the user."""
        user = interaction.user
        await self.bot.deps.community.check_user(user.id)
        service = self.bot.deps.service
        if job is None:
            active = await service.jobs_of(user.id, limit=1, active=True)
            if not active:
                raise BadInputError("You have no queued or running job to cancel.")
            target = active[0]
        else:
            target = await self._own_job(job.strip(), user.id)
        stopped = await service.cancel(target.id)
        text = (
            f"Cancelling job `{target.id}`."
            if stopped
            else f"Job `{target.id}` has already ended ({target.state})."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="show", description="Post one of your finished jobs again")
    @app_commands.describe(job_id="The job's id")
    async def show(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Re-post an own finished job here, with live buttons."""
        await self.bot.deps.community.check_user(interaction.user.id)
        view = await self._own_job(job_id.strip(), interaction.user.id)
        if view.state is not JobState.SUCCEEDED:
            raise BadInputError(f"Job `{view.id}` has no images ({view.state.value}).")
        grid = Path(view.images[0]) if view.images else None
        if grid is None or not grid.is_file():
            raise BadInputError(f"The images of job `{view.id}` are gone from the server's disk.")
        data = grid.read_bytes()
        private = (await self.bot.deps.community.account(interaction.user.id)).preferences.private
        await interaction.response.send_message(
            render.finished(Header.of(view)),
            file=discord.File(io.BytesIO(data), "grid.png"),
            view=buttons_view(render.result_buttons(view), view.id),
            ephemeral=private,
        )

    async def _own_job(self, job_id: str, user_id: int) -> JobView:
        view = await self.bot.deps.service.job(job_id) if len(job_id) <= 64 else None
        if view is None or view.user_id != user_id:
            raise UnknownJobError(job_id)
        return view

    async def _active_jobs(self, user_id: int) -> list[JobView]:
        return await self.bot.deps.service.jobs_of(user_id, limit=QUEUE_SHOWN, active=True)

    async def _job_lines(self, jobs: list[JobView]) -> list[str]:
        service = self.bot.deps.service
        return [render.job_line(view, await service.status(view.id)) for view in jobs]


def _describe(preferences: Preferences) -> str:
    speed = preferences.speed.value if preferences.speed is not None else "server default"
    suffix = f"`{render.clip(preferences.suffix, 200)}`" if preferences.suffix else "none"
    return (
        "Your settings:\n"
        f"**Speed** {speed}\n"
        f"**Aspect ratio** {preferences.aspect or 'model default'}\n"
        f"**Private results** {'yes' if preferences.private else 'no'}\n"
        f"**Prompt suffix** {suffix}"
    )
