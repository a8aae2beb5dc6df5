"""``/imagine`` and the buttons under its results."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    """Add the imagine cog and make its click handler the buttons' target."""
    from bot.cogs.imagine.clicks import ClickHandler
    from bot.cogs.imagine.cog import ImagineCog

    bot.clicks = ClickHandler(bot)
    await bot.add_cog(ImagineCog(bot))
