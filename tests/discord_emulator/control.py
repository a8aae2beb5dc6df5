"""The control API under /_emulator/ (for process mode) and the JSON world-file loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.discord_emulator.http_support import json_response
from tests.discord_emulator.interactions import Interaction
from tests.discord_emulator.messages import Message
from tests.discord_emulator.models import ApiError, EmulatorError, Guild, Json, User

if TYPE_CHECKING:
    from tests.discord_emulator.server import DiscordEmulator

PREFIX = "/_emulator"
ControlHandler = Callable[[Json, web.Request], Awaitable[Any]]


def load_world(emulator: DiscordEmulator, spec: Json) -> None:
    """Build users, guilds, channels, roles and members from a world description.

    ``{"users": ["alice", "admin"], "guilds": [{"name": "test guild", "owner": "admin",
    "channels": ["general"], "roles": [{"name": "pro", "permissions": 0}],
    "members": ["alice", {"user": "bob", "roles": ["pro"]}]}], "closed_dms": ["bob"]}``
    """
    for name in spec.get("users", []):
        emulator.add_user(name)
    for guild_spec in spec.get("guilds", []):
        _load_guild(emulator, guild_spec)
    for name in spec.get("closed_dms", []):
        emulator.close_dms(emulator.users[name])


def _load_guild(emulator: DiscordEmulator, spec: Json) -> Guild:
    guild = emulator.add_guild(spec["name"], emulator.users[spec["owner"]])
    for channel in spec.get("channels", []):
        guild.add_channel(channel)
    roles = {}
    for role in spec.get("roles", []):
        roles[role["name"]] = guild.add_role(role["name"], int(role.get("permissions", 0)))
    for member in spec.get("members", []):
        member = {"user": member} if isinstance(member, str) else member
        member_roles = [roles[name] for name in member.get("roles", [])]
        guild.add_member(emulator.users[member["user"]], member_roles)
    return guild


def message_summary(message: Message) -> Json:
    """A message as the control API lists it: the payload plus what only the emulator knows."""
    return message.payload() | {
        "deleted": message.deleted,
        "ephemeral_to": None if message.ephemeral_to is None else str(message.ephemeral_to),
        "interaction_token": message.interaction_token,
        "edit_count": len(message.edits) - 1,
    }


def interaction_summary(interaction: Interaction) -> Json:
    """An interaction and what the bot answered."""
    original = interaction.original()
    return {
        "id": str(interaction.id),
        "token": interaction.token,
        "type": int(interaction.type),
        "response_type": interaction.response_type,
        "ephemeral": interaction.ephemeral,
        "modal": interaction.modal,
        "original": None if original is None else message_summary(original),
        "followups": [message_summary(m) for m in interaction.followups],
        "rejected": list(interaction.rejected),
    }


def _user_json(user: User) -> Json:
    return {"id": str(user.id), "name": user.name}


class ControlApi:
    """JSON handlers that drive the emulator from another process."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emulator = emulator

    def install(self, app: web.Application) -> None:
        """Add the /_emulator/ routes."""
        routes: list[tuple[str, str, ControlHandler]] = [
            ("GET", "/state", self.state),
            ("POST", "/users", self.add_user),
            ("POST", "/users/{user}/close_dms", self.close_dms),
            ("POST", "/guilds", self.add_guild),
            ("POST", "/guilds/{guild}/channels", self.add_channel),
            ("POST", "/guilds/{guild}/roles", self.add_role),
            ("POST", "/guilds/{guild}/members", self.add_member),
            ("POST", "/slash", self.slash),
            ("POST", "/click", self.click),
            ("POST", "/modal", self.modal),
            ("GET", "/interactions/{id}", self.interaction),
            ("GET", "/messages", self.messages),
            ("GET", "/requests", self.requests),
            ("GET", "/commands", self.commands),
            ("POST", "/faults", self.fault),
            ("POST", "/gateway/drop", self.drop),
            ("POST", "/expire_tokens", self.expire),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, PREFIX + path, _wrap(handler))

    def _user(self, user_id: Any) -> User:
        user = self.emulator.world.users.get(int(user_id))
        if user is None:
            raise KeyError(f"unknown user {user_id}")
        return user

    def _guild(self, request: web.Request) -> Guild:
        guild = self.emulator.world.guilds.get(int(request.match_info["guild"]))
        if guild is None:
            raise KeyError(f"unknown guild {request.match_info['guild']}")
        return guild

    async def state(self, body: Json, request: web.Request) -> Json:
        """The world and the gateway's counters."""
        emulator = self.emulator
        guilds = [
            {
                "id": str(guild.id),
                "name": guild.name,
                "owner_id": str(guild.owner_id),
                "channels": [{"id": str(c.id), "name": c.name} for c in guild.channels],
                "roles": [{"id": str(r.id), "name": r.name} for r in guild.roles],
                "members": [str(user_id) for user_id in guild.members],
            }
            for guild in emulator.guilds
        ]
        return {
            "url": emulator.url,
            "bot": _user_json(emulator.bot),
            "application_id": str(emulator.application_id),
            "users": [_user_json(user) for user in emulator.users.values()],
            "guilds": guilds,
            "gateway": dataclasses.asdict(emulator.gateway_stats),
        }

    async def add_user(self, body: Json, request: web.Request) -> Json:
        """{"name"} -> the user."""
        return _user_json(self.emulator.add_user(body["name"]))

    async def close_dms(self, body: Json, request: web.Request) -> Json:
        """The user's DMs are closed."""
        self.emulator.close_dms(self._user(request.match_info["user"]))
        return {}

    async def add_guild(self, body: Json, request: web.Request) -> Json:
        """{"name", "owner_id"} -> the guild."""
        guild = self.emulator.add_guild(body["name"], self._user(body["owner_id"]))
        return {"id": str(guild.id), "name": guild.name}

    async def add_channel(self, body: Json, request: web.Request) -> Json:
        """{"name"} -> the channel."""
        channel = self._guild(request).add_channel(body["name"])
        return {"id": str(channel.id), "name": channel.name}

    async def add_role(self, body: Json, request: web.Request) -> Json:
        """{"name", "permissions"} -> the role."""
        role = self._guild(request).add_role(body["name"], int(body.get("permissions", 0)))
        return {"id": str(role.id), "name": role.name}

    async def add_member(self, body: Json, request: web.Request) -> Json:
        """{"user_id", "role_ids"} -> {}."""
        guild = self._guild(request)
        wanted = {int(role_id) for role_id in body.get("role_ids", [])}
        guild.add_member(self._user(body["user_id"]), [r for r in guild.roles if r.id in wanted])
        return {}

    async def slash(self, body: Json, request: web.Request) -> Json:
        """{"user_id", "channel_id", "command", "options"} -> the interaction id and token.

        USER, ROLE and CHANNEL option values are ids.
        """
        user = self._user(body["user_id"])
        channel = self.emulator.world.channel(int(body["channel_id"]))
        options = body.get("options", {})
        interaction = await self.emulator.slash(user, channel, body["command"], options)
        return {"interaction_id": str(interaction.id), "token": interaction.token}

    async def click(self, body: Json, request: web.Request) -> Json:
        """{"user_id", "message_id", "custom_id", "values"?} -> the interaction id."""
        message = self.emulator.world.message(int(body["message_id"]))
        user = self._user(body["user_id"])
        custom_id, values = body["custom_id"], body.get("values")
        interaction = await self.emulator.click(user, message, custom_id, values)
        return {"interaction_id": str(interaction.id), "token": interaction.token}

    async def modal(self, body: Json, request: web.Request) -> Json:
        """{"user_id", "channel_id", "custom_id", "values"} -> the interaction id."""
        user = self._user(body["user_id"])
        channel = self.emulator.world.channel(int(body["channel_id"]))
        values = body.get("values", {})
        interaction = await self.emulator.submit_modal(user, channel, body["custom_id"], values)
        return {"interaction_id": str(interaction.id), "token": interaction.token}

    async def interaction(self, body: Json, request: web.Request) -> Json:
        """One interaction and the bot's answers."""
        interaction = self.emulator.hub.by_id.get(int(request.match_info["id"]))
        if interaction is None:
            raise KeyError(f"unknown interaction {request.match_info['id']}")
        return interaction_summary(interaction)

    async def messages(self, body: Json, request: web.Request) -> list[Json]:
        """Every message (?channel_id= narrows), with attachment URLs."""
        channel_id = request.query.get("channel_id")
        return [
            message_summary(m)
            for m in self.emulator.messages
            if channel_id is None or str(m.channel_id) == channel_id
        ]

    async def requests(self, body: Json, request: web.Request) -> list[Json]:
        """Every REST request the bot made."""
        return [dataclasses.asdict(r) | {"auth": str(r.auth)} for r in self.emulator.requests]

    async def commands(self, body: Json, request: web.Request) -> list[Json]:
        """Synced commands (?guild_id= for a guild's)."""
        guild_id = request.query.get("guild_id")
        return self.emulator.commands(None if guild_id is None else int(guild_id))

    async def fault(self, body: Json, request: web.Request) -> Json:
        """{"kind": "rate_limit"|"fail", "method", "path", "times", "retry_after_s", "global",
        "status"}."""
        method, path, times = body["method"], body["path"], int(body.get("times", 1))
        if body.get("kind") == "rate_limit":
            retry = float(body.get("retry_after_s", 0.1))
            glob = bool(body.get("global", False))
            self.emulator.rate_limit(method, path, times=times, retry_after_s=retry, global_=glob)
        else:
            self.emulator.fail(method, path, status=int(body.get("status", 500)), times=times)
        return {}

    async def drop(self, body: Json, request: web.Request) -> Json:
        """{"code"?}: drop the bot's gateway connection."""
        await self.emulator.drop_gateway(int(body.get("code", 4000)))
        return {}

    async def expire(self, body: Json, request: web.Request) -> Json:
        """Expire every interaction token issued so far."""
        self.emulator.expire_interaction_tokens()
        return {}


def _wrap(handler: ControlHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def run(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        try:
            return json_response(await handler(body or {}, request))
        except EmulatorError as error:
            return json_response({"error": str(error)}, 400)
        except ApiError as error:
            return json_response({"error": error.message, "code": error.code}, error.status)
        except (KeyError, ValueError) as error:
            return json_response({"error": f"{type(error).__name__}: {error}"}, 404)

    return run
