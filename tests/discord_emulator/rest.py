"""Discord's REST routes under /api/v10 (and the attachment CDN) as the emulator serves them."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from tests.discord_emulator.commands import store_commands
from tests.discord_emulator.gateway import Gateway
from tests.discord_emulator.http_support import (
    API_PREFIX,
    UNKNOWN_ROUTE,
    Handler,
    json_response,
    no_content,
    request_body,
)
from tests.discord_emulator.interactions import Interaction, Interactions
from tests.discord_emulator.messages import Message
from tests.discord_emulator.models import ApiError, Channel, ErrorCode, Json, User
from tests.discord_emulator.world import World

_TRUE = {"1", "true", "True"}


def _snowflake(request: web.Request, name: str, error: Callable[[], ApiError]) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise error() from None


def _unknown_channel() -> ApiError:
    return ApiError(404, ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")


def _unknown_message() -> ApiError:
    return ApiError(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")


class RestApi:
    """The route handlers; each reads the world and answers as Discord does."""

    def __init__(
        self, world: World, interactions: Interactions, gateway: Gateway, app_owner: User
    ) -> None:
        self.world = world
        self.interactions = interactions
        self.gateway = gateway
        self.app_owner = app_owner

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path under /api/v10, handler), specific paths before general ones."""
        ix_msg = "/webhooks/{app}/{token}/messages"
        return [
            ("GET", "/gateway", self.get_gateway),
            ("GET", "/gateway/bot", self.get_gateway),
            ("GET", "/users/@me", self.get_me),
            ("POST", "/users/@me/channels", self.create_dm),
            ("GET", "/users/{user}", self.get_user),
            ("GET", "/oauth2/applications/@me", self.get_application),
            ("GET", "/applications/@me", self.get_application),
            ("GET", "/applications/{app}/commands", self.get_commands),
            ("PUT", "/applications/{app}/commands", self.put_commands),
            ("GET", "/applications/{app}/guilds/{guild}/commands", self.get_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self.put_commands),
            ("POST", "/interactions/{id}/{token}/callback", self.callback),
            ("POST", "/webhooks/{app}/{token}", self.execute_webhook),
            ("GET", ix_msg + "/@original", self.get_webhook_message),
            ("PATCH", ix_msg + "/@original", self.edit_webhook_message),
            ("DELETE", ix_msg + "/@original", self.delete_webhook_message),
            ("GET", ix_msg + "/{id}", self.get_webhook_message),
            ("PATCH", ix_msg + "/{id}", self.edit_webhook_message),
            ("DELETE", ix_msg + "/{id}", self.delete_webhook_message),
            ("GET", "/channels/{channel}", self.get_channel),
            ("GET", "/channels/{channel}/messages", self.list_messages),
            ("POST", "/channels/{channel}/messages", self.create_message),
            ("GET", "/channels/{channel}/messages/{id}", self.get_message),
            ("PATCH", "/channels/{channel}/messages/{id}", self.edit_message),
            ("DELETE", "/channels/{channel}/messages/{id}", self.delete_message),
            ("POST", "/channels/{channel}/typing", self.typing),
            ("GET", "/guilds/{guild}", self.get_guild),
            ("GET", "/guilds/{guild}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild}/roles", self.get_roles),
            ("GET", "/guilds/{guild}/members/{user}", self.get_member),
        ]

    def install(self, app: web.Application) -> None:
        """Add every route, then the catch-all that answers 404 for the rest."""
        for method, path, handler in self.routes():
            app.router.add_route(method, API_PREFIX + path, handler)
        app.router.add_route("*", UNKNOWN_ROUTE.replace("{tail}", "{tail:.*}"), self.not_found)
        app.router.add_get("/attachments/{channel}/{id}/{filename}", self.cdn)

    async def not_found(self, request: web.Request) -> web.Response:
        """Routes the emulator does not implement: 404 with a JSON body (and recorded)."""
        return json_response({"message": "404: Not Found", "code": 0}, 404)

    async def cdn(self, request: web.Request) -> web.Response:
        """The uploaded bytes of an attachment."""
        attachment = self.world.attachments.get(int(request.match_info["id"]))
        if attachment is None or attachment.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        content_type = attachment.content_type or "application/octet-stream"
        return web.Response(body=attachment.data, headers={"Content-Type": content_type})

    # ------------------------------------------------------------------ users, app

    async def get_gateway(self, request: web.Request) -> web.Response:
        """GET /gateway and /gateway/bot."""
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": self.gateway.url, "shards": 1, "session_start_limit": limit})

    async def get_me(self, request: web.Request) -> web.Response:
        """The bot user."""
        extra = {"verified": True, "mfa_enabled": False, "locale": "en-US", "email": None}
        return json_response(self.world.bot.payload() | extra)

    async def get_user(self, request: web.Request) -> web.Response:
        """Any user by id."""
        user_id = _snowflake(request, "user", lambda: ApiError(404, 10013, "Unknown User"))
        return json_response(self.world.user(user_id).payload())

    async def create_dm(self, request: web.Request) -> web.Response:
        """POST /users/@me/channels: the DM channel with recipient_id (closed DMs fail later)."""
        recipient = request_body(request).object().get("recipient_id")
        user = self.world.users.get(int(recipient or 0))
        if user is None or user is self.world.bot:
            raise ApiError(400, ErrorCode.INVALID_RECIPIENTS, "Invalid Recipient(s)")
        return json_response(self.world.dm_channel(user).payload())

    async def get_application(self, request: web.Request) -> web.Response:
        """The application, as Client.login reads it."""
        world = self.world
        return json_response(
            {
                "id": str(world.application_id),
                "name": world.bot.name,
                "icon": None,
                "description": "",
                "summary": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "flags": world.application_flags,
                "owner": self.app_owner.payload(),
                "team": None,
                "bot": world.bot.payload(),
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "tags": [],
                "integration_types_config": {"0": {}},
            }
        )

    def _check_app(self, request: web.Request) -> None:
        if request.match_info["app"] != str(self.world.application_id):
            raise ApiError(404, ErrorCode.UNKNOWN_APPLICATION, "Unknown Application")

    def _command_scope(self, request: web.Request) -> int | None:
        self._check_app(request)
        if "guild" not in request.match_info:
            return None
        guild_id = _snowflake(request, "guild", lambda: ApiError(404, 10004, "Unknown Guild"))
        return self.world.guild(guild_id).id

    async def get_commands(self, request: web.Request) -> web.Response:
        """The stored commands, global or of a guild."""
        return json_response(self.world.commands.get(self._command_scope(request), []))

    async def put_commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite; answers the stored list with ids."""
        scope = self._command_scope(request)
        return json_response(store_commands(self.world, scope, request_body(request).json))

    # ------------------------------------------------------------------ interactions

    async def callback(self, request: web.Request) -> web.Response:
        """POST /interactions/{id}/{token}/callback."""
        ix_id = _snowflake(request, "id", lambda: ApiError(404, 10062, "Unknown interaction"))
        body = request_body(request)
        result = self.interactions.callback(
            ix_id, request.match_info["token"], body.object(), body.files
        )
        if request.query.get("with_response") in _TRUE:
            return json_response(result)
        return no_content()

    def _webhook(self, request: web.Request) -> Interaction:
        app_id = _snowflake(request, "app", lambda: ApiError(404, 10015, "Unknown Webhook"))
        return self.interactions.by_webhook(app_id, request.match_info["token"])

    async def execute_webhook(self, request: web.Request) -> web.Response:
        """A follow-up message (?wait=true answers it, else 204)."""
        interaction = self._webhook(request)
        body = request_body(request)
        message = self.interactions.execute(interaction, body.object(), body.files)
        if request.query.get("wait") in _TRUE:
            return json_response(message.payload())
        return no_content()

    def _webhook_message(self, request: web.Request) -> Message:
        interaction = self._webhook(request)
        reference = request.match_info.get("id", "@original")
        return self.interactions.webhook_message(interaction, reference)

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        """GET .../messages/@original or /{id}."""
        return json_response(self._webhook_message(request).payload())

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        """PATCH .../messages/@original or /{id}."""
        message = self._webhook_message(request)
        body = request_body(request)
        self.world.edit_message(message, body.object(), body.files)
        return json_response(message.payload())

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        """DELETE .../messages/@original or /{id}."""
        self.world.delete_message(self._webhook_message(request))
        return no_content()

    # ------------------------------------------------------------------ channels

    def _channel(self, request: web.Request) -> Channel:
        return self.world.channel(_snowflake(request, "channel", _unknown_channel))

    def _message(self, request: web.Request) -> Message:
        channel = self._channel(request)
        message = self.world.message(_snowflake(request, "id", _unknown_message))
        if message.channel_id != channel.id or message.ephemeral_to is not None:
            raise _unknown_message()
        return message

    async def get_channel(self, request: web.Request) -> web.Response:
        """A guild or DM channel."""
        return json_response(self._channel(request).payload())

    async def list_messages(self, request: web.Request) -> web.Response:
        """Newest first, with limit / before / after / around."""
        channel = self._channel(request)
        messages = self.world.visible_messages(channel.id)
        limit = max(1, min(100, int(request.query.get("limit", "50"))))
        query = request.query
        if "before" in query:
            messages = [m for m in messages if m.id < int(query["before"])]
        if "after" in query:
            messages = [m for m in messages if m.id > int(query["after"])][:limit]
        if "around" in query:
            around = int(query["around"])
            older = [m for m in messages if m.id <= around][-((limit + 1) // 2) :]
            messages = older + [m for m in messages if m.id > around][: limit // 2]
        chosen = messages[-limit:]
        return json_response([m.payload() for m in reversed(chosen)])

    async def create_message(self, request: web.Request) -> web.Response:
        """POST /channels/{id}/messages, JSON or multipart."""
        channel = self._channel(request)
        body = request_body(request)
        message = self.world.create_message(channel, body.object(), body.files)
        return json_response(message.payload())

    async def get_message(self, request: web.Request) -> web.Response:
        """One message of a channel."""
        return json_response(self._message(request).payload())

    async def edit_message(self, request: web.Request) -> web.Response:
        """PATCH: only the bot's own messages; attachments as the edit lists them."""
        message = self._message(request)
        if message.author is not self.world.bot:
            reason = "Cannot edit a message authored by another user"
            raise ApiError(403, ErrorCode.CANNOT_EDIT_OTHERS_MESSAGE, reason)
        body = request_body(request)
        self.world.edit_message(message, body.object(), body.files)
        return json_response(message.payload())

    async def delete_message(self, request: web.Request) -> web.Response:
        """DELETE a message."""
        self.world.delete_message(self._message(request))
        return no_content()

    async def typing(self, request: web.Request) -> web.Response:
        """The typing indicator."""
        self._channel(request)
        return no_content()

    # ------------------------------------------------------------------ guilds

    def _guild_id(self, request: web.Request) -> int:
        return _snowflake(request, "guild", lambda: ApiError(404, 10004, "Unknown Guild"))

    async def get_guild(self, request: web.Request) -> web.Response:
        """A guild (without members, as the REST route answers)."""
        guild = self.world.guild(self._guild_id(request))
        payload: Json = guild.create_payload(self.world.bot.id, all_members=False)
        for key in ("members", "channels", "threads", "presences", "voice_states", "joined_at"):
            payload.pop(key, None)
        return json_response(payload)

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        """A guild's channels."""
        guild = self.world.guild(self._guild_id(request))
        return json_response([channel.payload() for channel in guild.channels])

    async def get_roles(self, request: web.Request) -> web.Response:
        """A guild's roles."""
        guild = self.world.guild(self._guild_id(request))
        return json_response([role.payload() for role in guild.roles])

    async def get_member(self, request: web.Request) -> web.Response:
        """GET /guilds/{g}/members/{u}: 404 10007 when not a member."""
        guild = self.world.guild(self._guild_id(request))
        unknown = ApiError(404, ErrorCode.UNKNOWN_MEMBER, "Unknown Member")
        member = guild.members.get(_snowflake(request, "user", lambda: unknown))
        if member is None:
            raise unknown
        return json_response(member.payload())
