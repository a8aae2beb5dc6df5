"""``/admin``: for members with Manage Server or a configured admin role.

Every use, a refused one included, is written to the audit log with who, what, on whom
and when; answers are ephemeral.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
import structlog
from discord import app_commands
from discord.ext import commands

from backend.degrade.ladder import Level
from backend.errors import BadInputError
from backend.models import Lane
from bot.errors import AdminOnlyError, send_ephemeral

if TYPE_CHECKING:
    from backend.operations import Operations
    from bot.client import ImagineBot

log = structlog.get_logger(__name__)

LEVELS = [app_commands.Choice(name=level.value, value=level.value) for level in Level]
LANES = [app_commands.Choice(name=lane.value, value=lane.value) for lane in Lane]
AUDIT_MAX = 50


class AdminCog(commands.GroupCog, group_name="admin", group_description="Run the service"):
    """The ``/admin`` command group."""

    degrade = app_commands.Group(name="degrade", description="The degradation level")
    tier = app_commands.Group(name="tier", description="User tiers")
    words = app_commands.Group(name="banned-words", description="Words refused in prompts")
    queue = app_commands.Group(name="queue", description="The job queue")
    model = app_commands.Group(name="model", description="Models on this host's devices")

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """Admins only; everyone else is refused (and the attempt is audited)."""
        command = interaction.command.qualified_name if interaction.command else "admin"
        if self.bot.is_admin(interaction.user):
            await self._audit(interaction, command, None, dict(_options(interaction)))
            return True
        await self._audit(interaction, "refused", command, {})
        raise AdminOnlyError

    # -- degradation -------------------------------------------------------------------

    @degrade.command(name="set", description="Pin the degradation level")
    @app_commands.choices(level=LEVELS)
    async def degrade_set(self, interaction: discord.Interaction[Any], level: str) -> None:
        """Pin ``level`` until cleared."""
        status = await self._ops().set_degrade(Level(level), interaction.user.id)
        await self._say(interaction, _degrade_text(status))

    @degrade.command(name="clear", description="Let the load decide the level again")
    async def degrade_clear(self, interaction: discord.Interaction[Any]) -> None:
        """Drop the pin."""
        status = await self._ops().set_degrade(None, interaction.user.id)
        await self._say(interaction, _degrade_text(status))

    @degrade.command(name="status", description="The level and what it restricts")
    async def degrade_status(self, interaction: discord.Interaction[Any]) -> None:
        """Show the level."""
        await self._say(interaction, _degrade_text(self._ops().degrade_status()))

    # -- people ------------------------------------------------------------------------

    @tier.command(name="set", description="Assign a user's tier (it wins over roles)")
    @app_commands.describe(tier="A tier name, or 'roles' to let the user's roles decide")
    async def tier_set(
        self, interaction: discord.Interaction[Any], user: discord.User, tier: str
    ) -> None:
        """Assign ``tier`` to a member of this server."""
        self._require_member(interaction, user)
        name = tier.strip().lower()
        await self.bot.deps.community.set_tier(
            interaction.user.id, user.id, None if name == "roles" else name
        )
        await self._say(interaction, f"{user.mention} is now on tier **{name}**.")

    @app_commands.command(name="ban", description="Refuse every request of a user")
    async def ban(
        self, interaction: discord.Interaction[Any], user: discord.User, reason: str | None = None
    ) -> None:
        """Ban ``user``."""
        if user.id == interaction.user.id:
            raise BadInputError("You cannot ban yourself.")
        await self.bot.deps.community.ban(interaction.user.id, user.id, reason)
        note = "" if self._is_member(interaction, user) else " (not a member of this server)"
        await self._say(interaction, f"{user.mention} is banned{note}.")

    @app_commands.command(name="unban", description="Lift a user's ban")
    async def unban(self, interaction: discord.Interaction[Any], user: discord.User) -> None:
        """Unban ``user``."""
        was = await self.bot.deps.community.unban(interaction.user.id, user.id)
        text = f"{user.mention} is no longer banned." if was else f"{user.mention} was not banned."
        await self._say(interaction, text)

    # -- banned words ------------------------------------------------------------------

    @words.command(name="add", description="Refuse prompts with this word")
    async def words_add(self, interaction: discord.Interaction[Any], word: str) -> None:
        """Ban a word."""
        added = await self.bot.deps.community.add_banned_word(interaction.user.id, word)
        await self._say(interaction, "Added." if added else "It was already banned.")

    @words.command(name="remove", description="Allow this word again")
    async def words_remove(self, interaction: discord.Interaction[Any], word: str) -> None:
        """Unban a word."""
        removed = await self.bot.deps.community.remove_banned_word(interaction.user.id, word)
        await self._say(interaction, "Removed." if removed else "It was not banned.")

    @words.command(name="list", description="The banned words")
    async def words_list(self, interaction: discord.Interaction[Any]) -> None:
        """List the banned words."""
        words = await self.bot.deps.community.banned_words()
        text = ", ".join(f"`{word}`" for word in words) if words else "No banned words."
        await self._say(interaction, text[:1900])

    # -- the queue ---------------------------------------------------------------------

    @queue.command(name="pause", description="Start no new jobs (of one lane, or any)")
    @app_commands.choices(lane=LANES)
    async def queue_pause(
        self, interaction: discord.Interaction[Any], lane: str | None = None
    ) -> None:
        """Pause a lane or every lane."""
        paused = await self._ops().pause(Lane(lane) if lane else None, interaction.user.id)
        await self._say(interaction, "Paused lanes: " + (", ".join(paused) or "none"))

    @queue.command(name="resume", description="Start jobs again")
    @app_commands.choices(lane=LANES)
    async def queue_resume(
        self, interaction: discord.Interaction[Any], lane: str | None = None
    ) -> None:
        """Resume a lane or every lane."""
        paused = await self._ops().resume(Lane(lane) if lane else None, interaction.user.id)
        await self._say(interaction, "Paused lanes: " + (", ".join(paused) or "none"))

    @queue.command(name="purge", description="Cancel every queued job (of one lane, or all)")
    @app_commands.choices(lane=LANES)
    async def queue_purge(
        self, interaction: discord.Interaction[Any], lane: str | None = None
    ) -> None:
        """Cancel queued jobs; each one's progress message tells its user."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        purged = await self._ops().purge(Lane(lane) if lane else None, interaction.user.id)
        users = {user_id for _job, user_id in purged}
        await interaction.followup.send(
            f"Cancelled {len(purged)} queued jobs of {len(users)} users; each job's "
            "message says so.",
            ephemeral=True,
        )

    # -- models, stats, audit ----------------------------------------------------------

    @model.command(name="load", description="Load a model on this host's devices now")
    async def model_load(self, interaction: discord.Interaction[Any], name: str) -> None:
        """Load a model."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        devices = await self._ops().load_model(name, interaction.user.id)
        await interaction.followup.send(f"`{name}` loaded on {', '.join(devices)}.", ephemeral=True)

    @model.command(name="unload", description="Unload a model from this host's devices")
    async def model_unload(self, interaction: discord.Interaction[Any], name: str) -> None:
        """Unload a model."""
        devices = await self._ops().unload_model(name, interaction.user.id)
        text = (
            f"`{name}` unloaded from {', '.join(devices)}."
            if devices
            else f"`{name}` was not loaded."
        )
        await self._say(interaction, text)

    @app_commands.command(name="stats", description="Queue, waits, devices and today's jobs")
    async def stats(self, interaction: discord.Interaction[Any]) -> None:
        """Show the service's statistics."""
        stats = await self._ops().stats()
        lines = [f"**Degradation** {stats.level.value}"]
        for lane in stats.lanes:
            p95 = f"{lane.p95_wait_s:.1f} s" if lane.p95_wait_s is not None else "n/a"
            paused = " (paused)" if lane.paused else ""
            lines.append(
                f"**{lane.lane.value}**{paused}: {lane.queued} queued, p95 wait today {p95}"
            )
        busy = (
            f"{stats.busy_fraction:.0%}" if stats.busy_fraction is not None else "no local device"
        )
        lines += [
            f"**Devices busy** {busy}",
            f"**Today** {stats.jobs_today} jobs, {stats.failed_today} failed",
            f"**Preemptions** {stats.preemptions} since start",
            f"**Loaded models** {', '.join(stats.loaded_models) or 'none'}",
        ]
        await self._say(interaction, "\n".join(lines))

    @app_commands.command(name="audit", description="The latest admin actions")
    async def audit(
        self, interaction: discord.Interaction[Any], n: app_commands.Range[int, 1, AUDIT_MAX] = 10
    ) -> None:
        """Show the ``n`` latest audit entries."""
        entries = await self.bot.deps.community.audit_log(n)
        lines = [
            f"<t:{entry.at_ms // 1000}:f> <@{entry.actor_id}> {entry.action}"
            + (f" → {entry.target}" if entry.target else "")
            for entry in entries
        ]
        await self._say(interaction, "\n".join(lines)[:1900] or "The audit log is empty.")

    # -- helpers -----------------------------------------------------------------------

    def _ops(self) -> Operations:
        operations = self.bot.deps.operations
        if operations is None:
            raise BadInputError("Admin operations are not available in this process.")
        return operations

    @staticmethod
    def _is_member(interaction: discord.Interaction[Any], user: discord.User) -> bool:
        return isinstance(user, discord.Member) and interaction.guild_id == user.guild.id

    def _require_member(self, interaction: discord.Interaction[Any], user: discord.User) -> None:
        if not self._is_member(interaction, user):
            raise BadInputError(f"{user.mention} is not a member of this server.")

    async def _audit(
        self,
        interaction: discord.Interaction[Any],
        action: str,
        target: str | None,
        detail: dict[str, Any],
    ) -> None:
        detail = {**detail, "guild_id": interaction.guild_id, "at": datetime.now(UTC).isoformat()}
        await self.bot.deps.community.record(interaction.user.id, f"admin.{action}", target, detail)

    @staticmethod
    async def _say(interaction: discord.Interaction[Any], text: str) -> None:
        await send_ephemeral(interaction, text)


def _options(interaction: discord.Interaction[Any]) -> list[tuple[str, Any]]:
    """The options the command was given, flattened, for the audit log."""
    data: Any = interaction.data or {}
    found: list[tuple[str, Any]] = []
    stack = list(data.get("options", []))
    while stack:
        option = stack.pop()
        if "value" in option:
            found.append((option["name"], option["value"]))
        stack.extend(option.get("options", []))
    return found


def _degrade_text(status: Any) -> str:
    pinned = (
        f" (pinned by an admin; the load says {status.auto_level.value})" if status.override else ""
    )
    return f"Degradation level **{status.level.value}**{pinned}. Restricted: {status.restricts}."
