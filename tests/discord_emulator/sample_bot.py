"""A small discord.py bot that exercises every interaction shape the emulator serves."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import zlib
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands


def make_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG of the given size (red pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = make_png()


class Counter(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"counter:(?P<count>\d+)"):
    """A persistent button whose custom id holds its count; a click answers by edit (type 7)."""

    def __init__(self, count: int) -> None:
        super().__init__(discord.ui.Button(label=str(count), custom_id=f"counter:{count}"))
        self.count = count

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Counter:
        return cls(int(match["count"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(Counter(self.count + 1))
        await interaction.response.edit_message(content=f"count {self.count + 1}", view=view)


class Progress(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"progress:(?P<job>\w+)"):
    """A persistent button answered by a deferred update (type 6) then an @original edit."""

    def __init__(self, job: str) -> None:
        super().__init__(discord.ui.Button(label="progress", custom_id=f"progress:{job}"))
        self.job = job

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Progress:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content=f"job {self.job} running")


class Form(discord.ui.Modal, title="Describe"):
    """A modal (type 9) whose submit answers with a message."""

    prompt: discord.ui.TextInput[Form] = discord.ui.TextInput(label="Prompt", custom_id="prompt")
    style: discord.ui.Label[Form] = discord.ui.Label(
        text="Style",
        component=discord.ui.Select(
            custom_id="style",
            options=[discord.SelectOption(label="photo"), discord.SelectOption(label="sketch")],
        ),
    )

    def __init__(self) -> None:
        super().__init__(custom_id="form")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        select = self.style.component
        assert isinstance(select, discord.ui.Select)
        await interaction.response.send_message(f"got {self.prompt.value} as {select.values}")


def button_view(*items: discord.ui.Item[Any]) -> discord.ui.View:
    """A view without timeout holding the given items."""
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    return view


class SampleBot(commands.Bot):
    """The bot: commands are registered per guild; errors of callbacks land in `errors`."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(
            command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05
        )
        self.guild_id = guild_id
        self.errors: asyncio.Queue[BaseException] = asyncio.Queue()
        self.release = asyncio.Event()
        self.resumed = asyncio.Event()
        self.seen: list[str] = []
        self.tree.on_error = self._on_tree_error  # type: ignore[method-assign]
        _add_commands(self.tree, discord.Object(guild_id), self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(Counter, Progress)

    async def on_resumed(self) -> None:
        self.resumed.set()

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message.content)

    async def _on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        self.errors.put_nowait(getattr(error, "original", error))


def _add_commands(
    tree: app_commands.CommandTree[Any], guild: discord.Object, bot: SampleBot
) -> None:
    @tree.command()
    async def hello(interaction: discord.Interaction) -> None:
        """A global command: say where it ran."""
        where = "DM" if interaction.guild is None else interaction.guild.name
        await interaction.response.send_message(f"hello {interaction.user.name} in {where}")

    @tree.command(guild=guild)
    async def ping(interaction: discord.Interaction) -> None:
        """Answer with a message."""
        await interaction.response.send_message("pong")

    @tree.command(guild=guild)
    async def imagine(interaction: discord.Interaction, prompt: str, steps: int = 4) -> None:
        """Defer, then send the image with buttons as a follow-up."""
        await interaction.response.defer(thinking=True)
        file = discord.File(io.BytesIO(PNG), filename="out.png")
        view = button_view(Counter(0), Progress("j1"))
        await interaction.followup.send(f"{prompt} ({steps} steps)", file=file, view=view)

    @tree.command(guild=guild)
    async def secret(interaction: discord.Interaction) -> None:
        """Answer for the user's eyes only."""
        await interaction.response.send_message("only you", ephemeral=True)

    @tree.command(guild=guild)
    async def draft(interaction: discord.Interaction) -> None:
        """Answer, then edit the original response."""
        await interaction.response.send_message("draft")
        await interaction.edit_original_response(content="final")

    @tree.command(guild=guild)
    async def form(interaction: discord.Interaction) -> None:
        """Show a modal."""
        await interaction.response.send_modal(Form())

    @tree.command(guild=guild)
    async def later(interaction: discord.Interaction) -> None:
        """Defer, wait for the test's go, then follow up."""
        await interaction.response.defer()
        await bot.release.wait()
        await interaction.followup.send("late")

    admin = app_commands.Group(
        name="admin",
        description="Administration",
        guild_ids=[guild.id],
        default_permissions=discord.Permissions(manage_guild=True),
    )
    degrade = app_commands.Group(name="degrade", description="Degradation", parent=admin)
    tiers = app_commands.Group(name="tier", description="Tiers", parent=admin)

    @degrade.command(name="set")
    async def degrade_set(
        interaction: discord.Interaction, level: Literal["light", "heavy"]
    ) -> None:
        """Set the degradation level."""
        await interaction.response.send_message(f"degrade {level}")

    @tiers.command(name="set")
    async def tier_set(interaction: discord.Interaction, user: discord.User, tier: str) -> None:
        """Set a user's tier."""
        kind = type(user).__name__
        await interaction.response.send_message(f"{kind} {user.id} {user.name} {tier}")

    tree.add_command(admin)
