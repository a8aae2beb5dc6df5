"""``/admin``: degradation, tiers, bans, banned words, the queue, models, stats, audit."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.client import ImagineBot


async def setup(bot: ImagineBot) -> None:
    """Add the admin cog."""
    from bot.cogs.admin.cog import AdminCog

    await bot.add_cog(AdminCog(bot))
