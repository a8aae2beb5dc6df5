"""A user's own commands: settings, info, queue, cancel, show."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    """Add the account cog."""
    from bot.cogs.account.cog import AccountCog

    await bot.add_cog(AccountCog(bot))
