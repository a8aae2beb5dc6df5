"""Persistent buttons: the custom id carries the action, the sample and the job, so a
button works after a restart and on a message months old.

One :class:`JobButton` class is registered at start-up
(``Client.add_dynamic_items``); its template takes every custom id under the bot's
prefix, so a forged or stale id (unknown action, malformed job id) reaches the bot and
gets a clear answer instead of Discord's "interaction failed".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import discord

from bot.render import BUTTON_PREFIX, Action, ButtonSpec

_TEMPLATE = re.compile(rf"{BUTTON_PREFIX}:(?P<rest>.{{0,97}})")
_REST = re.compile(r"(?P<action>[a-z]):(?P<index>[0-9]{1,2}):(?P<job>[0-9a-f]{32})")
_STYLES = {
    Action.UPSCALE: discord.ButtonStyle.secondary,
    Action.VARIATION: discord.ButtonStyle.secondary,
    Action.REROLL: discord.ButtonStyle.secondary,
    Action.CANCEL: discord.ButtonStyle.danger,
}


@dataclass(frozen=True, slots=True)
class Click:
    """A parsed custom id: ``action`` None when the id is not one the bot made."""

    action: Action | None
    index: int
    job_id: str
    raw: str


def parse_custom_id(custom_id: str) -> Click:
    """The click a custom id stands for; a malformed one has ``action`` None."""
    match = _TEMPLATE.fullmatch(custom_id)
    rest = _REST.fullmatch(match.group("rest")) if match is not None else None
    if rest is None:
        return Click(None, 0, "", custom_id)
    try:
        action = Action(rest.group("action"))
    except ValueError:
        return Click(None, 0, "", custom_id)
    return Click(action, int(rest.group("index")), rest.group("job"), custom_id)


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=_TEMPLATE):
    """A button under a job's message; clicks go to the bot's click handler."""

    def __init__(self, custom_id: str, button: discord.ui.Button[Any] | None = None) -> None:
        super().__init__(button or discord.ui.Button(custom_id=custom_id, label="?"))
        self.click = parse_custom_id(custom_id)

    @classmethod
    def build(cls, spec: ButtonSpec, job_id: str) -> JobButton:
        """The button for ``spec`` under job ``job_id``."""
        button: discord.ui.Button[Any] = discord.ui.Button(
            custom_id=spec.custom_id(job_id),
            label=spec.label or None,
            emoji=spec.emoji,
            style=_STYLES[spec.action],
            row=spec.row,
        )
        return cls(button.custom_id or "", button)

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> JobButton:
        """Rebuild the button from a click (never raises: a bad id is answered later)."""
        button = item if isinstance(item, discord.ui.Button) else None
        return cls(match.group(0), button)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        """Hand the click to the bot (which answers every click, errors included)."""
        await interaction.client.clicks.on_click(interaction, self.click)


def buttons_view(specs: list[ButtonSpec], job_id: str) -> discord.ui.View:
    """A view of persistent buttons for ``job_id``. It is stopped before it is sent: the
    registered :class:`JobButton` answers its clicks, so no per-message view is kept."""
    view = discord.ui.View(timeout=None)
    for spec in specs:
        view.add_item(JobButton.build(spec, job_id))
    view.stop()
    return view
