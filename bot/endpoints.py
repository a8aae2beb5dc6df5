"""Where discord.py sends its requests: Discord itself, or a local Discord emulator
for end-to-end tests (never set in production).

discord.py reads three class attributes for its endpoints; :func:`point_at` sets them
from one base URL (REST under ``/api/v10``, the gateway at ``/gateway``, the CDN at the
root), as :data:`EMULATOR_ENV` asks at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import discord
import yarl

EMULATOR_ENV = "IMAGINE_DISCORD_EMULATOR_URL"


def point_at(url: str) -> None:
    """Send every REST, gateway and CDN request of this process to ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{EMULATOR_ENV} must be an http:// URL, not {url!r}")
    base = url.rstrip("/")
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    discord.http.Route.BASE = f"{base}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        f"{ws_scheme}://{parts.netloc}/gateway"
    )
    discord.asset.Asset.BASE = base


def point_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """Apply :data:`EMULATOR_ENV` when it is set; the URL used, or None for Discord."""
    url = environ.get(EMULATOR_ENV, "").strip()
    if not url:
        return None
    point_at(url)
    return url
