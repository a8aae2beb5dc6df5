"""A local Discord that the real, unmodified discord.py client talks to.

It serves Discord's REST API under ``/api/v10``, the gateway websocket at ``/gateway``
(JSON, zlib-stream when asked) and an attachment CDN at
``/attachments/{channel_id}/{attachment_id}/{filename}``, and it enforces the rules a bot
could notice: the 3-second interaction callback window (404 10062), one callback per
interaction (400 40060), 15-minute interaction tokens (401 50027), the first follow-up after
a deferral replacing the "thinking" message, edits keeping only the attachments they list,
closed DMs (403 50007), unknown objects (10003 channel, 10007 member, 10008 message) and
Discord's 429 format. Unimplemented routes answer 404 with a JSON body and are recorded.

In process::

    emu = DiscordEmulator(token="test-token")
    await emu.start()                        # emu.url == "http://127.0.0.1:PORT"
    admin = emu.add_user("admin")
    guild = emu.add_guild("test guild", owner=admin)
    channel = guild.add_channel("general")
    with emu.patch_discord():                # Route.BASE, DEFAULT_GATEWAY, Asset.BASE
        ...                                  # a discord.py client logs in with "test-token"
        ix = await emu.slash(admin, channel, "imagine", prompt="a red circle")
        await ix.wait_response()
        message = ix.original()
    await emu.close()

See :class:`DiscordEmulator` for the rest (clicks, modal submits, faults, gateway drops,
observing messages and requests). The pytest fixture ``discord_emulator`` lives in
``tests.discord_emulator.fixtures``.

Process mode: ``python -m tests.discord_emulator --port 0 [--token T] [--world FILE.json]``
prints ``emulator listening on http://127.0.0.1:PORT`` and runs until SIGTERM or SIGINT
(exit status 0). The world file is described in :func:`load_world`. Its control API takes
and answers JSON; ids are strings:

- ``GET /_emulator/state``: url, bot, application id, users, guilds (channels, roles,
  members) and gateway counters.
- ``POST /_emulator/users`` ``{"name"}``; ``POST /_emulator/users/{id}/close_dms``.
- ``POST /_emulator/guilds`` ``{"name", "owner_id"}``;
  ``POST /_emulator/guilds/{id}/channels`` ``{"name"}``;
  ``POST /_emulator/guilds/{id}/roles`` ``{"name", "permissions"}``;
  ``POST /_emulator/guilds/{id}/members`` ``{"user_id", "role_ids"}``.
- ``POST /_emulator/slash`` ``{"user_id", "channel_id", "command": "admin tier set",
  "options": {...}}`` (USER/ROLE/CHANNEL values are ids), ``POST /_emulator/click``
  ``{"user_id", "message_id", "custom_id", "values"?}``, ``POST /_emulator/modal``
  ``{"user_id", "channel_id", "custom_id", "values"}``: each answers
  ``{"interaction_id", "token"}``.
- ``GET /_emulator/interactions/{id}``: response type, ephemeral, original, follow-ups,
  rejected callbacks.
- ``GET /_emulator/messages[?channel_id=]`` (payloads with attachment URLs, plus deleted,
  ephemeral_to, edit_count), ``GET /_emulator/requests``, ``GET /_emulator/commands[?guild_id=]``.
- ``POST /_emulator/faults`` ``{"kind": "rate_limit"|"fail", "method", "path", "times",
  "retry_after_s", "global", "status"}``; ``POST /_emulator/gateway/drop`` ``{"code"?}``;
  ``POST /_emulator/expire_tokens``.

Errors answer ``{"error": ...}`` with 400 (Discord would not allow it) or 404 (unknown id).
"""

from __future__ import annotations

from tests.discord_emulator.control import load_world
from tests.discord_emulator.http_support import Fault
from tests.discord_emulator.interactions import Interaction
from tests.discord_emulator.messages import Attachment, Message
from tests.discord_emulator.models import (
    ALL_PERMISSIONS,
    ApiError,
    Auth,
    Channel,
    EmulatorError,
    GatewayStats,
    Guild,
    Member,
    RecordedRequest,
    Role,
    User,
)
from tests.discord_emulator.server import DiscordEmulator, discord_endpoints, patch_discord
from tests.discord_emulator.world import Upload

__all__ = [
    "ALL_PERMISSIONS",
    "ApiError",
    "Attachment",
    "Auth",
    "Channel",
    "DiscordEmulator",
    "EmulatorError",
    "Fault",
    "GatewayStats",
    "Guild",
    "Interaction",
    "Member",
    "Message",
    "RecordedRequest",
    "Role",
    "Upload",
    "User",
    "discord_endpoints",
    "load_world",
    "patch_discord",
]
