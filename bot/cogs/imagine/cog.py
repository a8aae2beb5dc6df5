"""``/imagine``: the whole prompt language inline, plus options for the common flags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
import structlog
from discord import app_commands
from discord.ext import commands

from backend.catalog import prompt_limits
from backend.models import Job, JobSpec
from backend.prompt import parse_prompt, with_defaults
from bot.errors import NotHereError, send_ephemeral
from bot.posting import start_job

if TYPE_CHECKING:
    from backend.community import Preferences
    from bot.client import ImagineBot

log = structlog.get_logger(__name__)

SPEEDS = [app_commands.Choice(name=name, value=name) for name in ("fast", "relax", "turbo")]
ASPECTS = [
    app_commands.Choice(name=ratio, value=ratio)
    for ratio in ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9")
]


class ImagineCog(commands.Cog):
    """The ``/imagine`` command."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Make four images from a prompt")
    @app_commands.describe(
        prompt="What to draw; flags such as --ar 16:9 --seed 7 --no text --relax go inline",
        aspect="Aspect ratio (same as --ar)",
        seed="Seed (same as --seed)",
        negative="What to keep out of the picture (same as --no)",
        speed="Lane (same as --fast, --relax, --turbo)",
    )
    @app_commands.choices(speed=SPEEDS, aspect=ASPECTS)
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        aspect: str | None = None,
        seed: app_commands.Range[int, 0, 2**32 - 1] | None = None,
        negative: str | None = None,
        speed: str | None = None,
    ) -> None:
        """Check, parse, submit, then keep the progress message up to date."""
        user = interaction.user
        community = self.bot.deps.community
        # A banned user is refused before any parsing work.
        await community.check_user(user.id)
        self._check_channel(interaction)
        preferences = (await community.account(user.id)).preferences
        spec = self._spec(interaction, prompt, aspect, seed, negative, speed, preferences)
        await community.check_prompt(" ".join((spec.prompt, spec.negative_prompt)), user.id)
        role_tier = self.bot.role_tier(user)

        async def submit(job_id: str) -> Job:
            return await self.bot.deps.service.submit(
                spec,
                user_id=user.id,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                job_id=job_id,
                role_tier=role_tier,
            )

        job = await start_job(self.bot, interaction, submit, private=preferences.private)
        held = self._held_back(job)
        if held is not None:
            await send_ephemeral(interaction, held)
        unknown = self.bot.deps.service.catalog.unknown_words(spec)
        if unknown:
            name = spec.model or self.bot.deps.service.catalog.default
            await send_ephemeral(
                interaction,
                f"Note: model `{name}` never saw the words {', '.join(unknown)}; "
                "it draws whatever it makes of them.",
            )

    def _held_back(self, job: Job) -> str | None:
        """Why a queued job will not start soon, if the service holds it back: an admin
        paused its lane, or the degradation level pauses its tier or lane."""
        operations = self.bot.deps.operations
        if operations is not None and job.lane in operations.paused_lanes():
            return (
                f"The service is paused for {job.lane.value} jobs by an admin; yours is "
                "queued and starts when it resumes."
            )
        restrictions = self.bot.deps.service.restrictions()
        if restrictions.claim_filter.allows(job.lane, job.tier):
            return None
        return (
            f"Degraded mode (level {restrictions.level.value}): the service is under heavy "
            f"load, and {job.tier} {job.lane.value} jobs wait until it eases. Yours is "
            "queued; paid tiers run first."
        )

    def _check_channel(self, interaction: discord.Interaction[Any]) -> None:
        allowed = self.bot.guild_settings(interaction.guild_id).allowed_channels
        if interaction.guild_id is not None and allowed and interaction.channel_id not in allowed:
            raise NotHereError(allowed)

    def _spec(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        aspect: str | None,
        seed: int | None,
        negative: str | None,
        speed: str | None,
        preferences: Preferences,
    ) -> JobSpec:
        """Flags typed in the prompt win over the command's options, which win over the
        user's preferences, which win over the guild's default speed."""
        limits = prompt_limits(self.bot.deps.settings)
        options = []
        if aspect:
            options.append(f"--ar {aspect}")
        if seed is not None:
            options.append(f"--seed {seed}")
        if negative:
            options.append(f"--no {negative}")
        if speed:
            options.append(f"--{speed}")
        mine = [preferences.suffix]
        if preferences.aspect:
            mine.append(f"--ar {preferences.aspect}")
        if preferences.speed is not None:
            mine.append(f"--{preferences.speed.value}")
        guild_speed = self.bot.guild_settings(interaction.guild_id).default_speed
        guild = f"--{guild_speed.value}" if guild_speed is not None else ""
        text = with_defaults(prompt, " ".join(options), " ".join(mine), guild, limits=limits)
        return parse_prompt(text, limits)
