"""Puts the bot together: the client, its deliverer, the persistent buttons and the
cogs. The composition root calls :func:`build_bot`; nothing else in the package
imports everything, so the modules stay free of import cycles."""

from __future__ import annotations

from bot.buttons import JobButton
from bot.client import BotDeps, ImagineBot
from bot.cogs import account, admin, imagine
from bot.delivery import Deliverer


def build_bot(deps: BotDeps, *, guild_ready_timeout_s: float = 2.0) -> ImagineBot:
    """The bot, ready to log in: its cogs and buttons are added in its setup hook."""
    bot = ImagineBot(deps, _setup, guild_ready_timeout_s=guild_ready_timeout_s)
    bot.deliveries = Deliverer(bot)
    return bot


async def _setup(bot: ImagineBot) -> None:
    bot.add_dynamic_items(JobButton)
    for extension in (imagine, account, admin):
        await extension.setup(bot)
