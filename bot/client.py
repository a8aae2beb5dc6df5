"""The Discord client: commands, persistent buttons and deliveries over the service.

Everything it talks to is built by the composition root (``cli``) and handed in as
:class:`BotDeps`; the client builds nothing of the backend itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import discord
import structlog
from discord import app_commands
from discord.ext import commands

from backend.community import Community, Delivery
from backend.operations import Operations
from backend.service import GenerationService, JobView
from bot.errors import reply_error, send_ephemeral
from config.settings import GuildSettings, Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BotDeps:
    """What the bot is given: settings, the service facades, admin operations."""

    settings: Settings
    service: GenerationService
    community: Community
    operations: Operations | None = None


class Deliveries(Protocol):
    """What the bot asks of its deliverer (:class:`bot.delivery.Deliverer`)."""

    async def start(self) -> None:
        """Resume what an earlier run left and start delivering."""
        ...

    async def close(self) -> None:
        """Stop following jobs; finals already offered still go out."""
        ...

    async def follow(self, delivery: Delivery, view: JobView, parent_link: str | None) -> None:
        """Keep the job's progress message up to date and deliver its result."""
        ...


class ClickTarget(Protocol):
    """What the persistent buttons hand their clicks to."""

    async def on_click(self, interaction: discord.Interaction[Any], click: Any) -> None:
        """Answer one click."""
        ...


Setup = Callable[["ImagineBot"], Awaitable[None]]


class ImagineBot(commands.Bot):
    """``commands.Bot`` with the imagine, account and admin cogs, the persistent job
    buttons and the deliverer; commands sync to ``discord.guild_ids`` (instantly) or
    globally."""

    # Set by the assembly (:func:`bot.assemble.build_bot`) before the client starts.
    deliveries: Deliveries
    clicks: ClickTarget

    def __init__(self, deps: BotDeps, setup: Setup, *, guild_ready_timeout_s: float = 2.0) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            guild_ready_timeout=guild_ready_timeout_s,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.deps = deps
        self._setup = setup
        self.synced_commands = 0

    async def setup_hook(self) -> None:
        """Cogs and buttons (the assembly's setup), the error handler, then command
        sync and the deliveries an earlier run left (they need the application id,
        known by now)."""
        await self._setup(self)
        self.tree.error(self._on_app_command_error)
        await self._sync()
        await self.deliveries.start()

    async def close(self) -> None:
        """Stop following jobs (finals already offered are sent), then disconnect."""
        await self.deliveries.close()
        await super().close()

    async def _sync(self) -> None:
        guild_ids = self.deps.settings.discord.guild_ids
        if not guild_ids:
            synced = await self.tree.sync()
            self.synced_commands = len(synced)
            log.info("commands_synced", scope="global", count=len(synced))
            return
        for guild_id in guild_ids:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            self.synced_commands = len(synced)
            log.info("commands_synced", scope="guild", guild_id=guild_id, count=len(synced))

    async def on_app_command_completion(
        self, interaction: discord.Interaction[Any], _command: object
    ) -> None:
        """After any command: hand the user the notes kept for them (results that could
        not reach them), each once."""
        try:
            notes = await self.deps.community.take_notes(interaction.user.id)
        except Exception:
            log.exception("notes_unavailable", user_id=interaction.user.id)
            return
        for note in notes:
            await send_ephemeral(interaction, note)

    async def _on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        await reply_error(interaction, error)

    # -- who may do what ---------------------------------------------------------------

    def guild_settings(self, guild_id: int | None) -> GuildSettings:
        """The bot settings of ``guild_id`` (the defaults in DMs and unlisted guilds)."""
        return self.deps.settings.bot.guild(guild_id)

    def role_tier(self, user: discord.User | discord.Member) -> str | None:
        """The tier the member's roles give in this guild: the one with the largest
        weight among the configured roles they have; None without such a role."""
        if not isinstance(user, discord.Member):
            return None
        mapping = self.guild_settings(user.guild.id).role_tiers
        tiers = self.deps.settings.scheduler.tiers
        named = [mapping[role.id] for role in user.roles if role.id in mapping]
        return max(named, key=lambda name: tiers[name].weight, default=None)

    def is_admin(self, user: discord.User | discord.Member) -> bool:
        """Manage Server in the guild, or one of the guild's configured admin roles."""
        if not isinstance(user, discord.Member):
            return False
        if user.guild_permissions.manage_guild:
            return True
        admin_roles = set(self.guild_settings(user.guild.id).admin_roles)
        return any(role.id in admin_roles for role in user.roles)
