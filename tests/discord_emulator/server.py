"""DiscordEmulator: the in-process API: serve, build the world, act as users, observe."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.discord_emulator.control import ControlApi
from tests.discord_emulator.gateway import CloseCode, Gateway
from tests.discord_emulator.http_support import Fault, RestContext, json_response, make_middleware
from tests.discord_emulator.interactions import Interaction, Interactions
from tests.discord_emulator.messages import Message
from tests.discord_emulator.models import (
    ALL_PERMISSIONS,
    Channel,
    EmulatorError,
    GatewayStats,
    Guild,
    Json,
    Notifier,
    RecordedRequest,
    User,
)
from tests.discord_emulator.rest import RestApi
from tests.discord_emulator.world import World


def discord_endpoints(url: str) -> dict[str, str]:
    """The three discord.py class attributes that point a client at an emulator at `url`."""
    base = url.rstrip("/")
    return {
        "discord.http.Route.BASE": f"{base}/api/v10",
        "discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY": _ws_url(base) + "/gateway",
        "discord.asset.Asset.BASE": base,
    }


def _ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http")


@contextlib.contextmanager
def patch_discord(url: str) -> Iterator[None]:
    """Point discord.py at the emulator at `url`; restore the old endpoints on exit."""
    import discord.asset
    import discord.gateway
    import discord.http
    import yarl

    endpoints = discord_endpoints(url)
    ws_class = discord.gateway.DiscordWebSocket
    old = (discord.http.Route.BASE, ws_class.DEFAULT_GATEWAY, discord.asset.Asset.BASE)
    discord.http.Route.BASE = endpoints["discord.http.Route.BASE"]
    gateway = endpoints["discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY"]
    ws_class.DEFAULT_GATEWAY = yarl.URL(gateway)
    discord.asset.Asset.BASE = endpoints["discord.asset.Asset.BASE"]
    try:
        yield
    finally:
        discord.http.Route.BASE, ws_class.DEFAULT_GATEWAY, discord.asset.Asset.BASE = old


class DiscordEmulator:
    """A local Discord (REST, gateway, CDN) that the unmodified discord.py client talks to.

    Build the world (`add_user`, `add_guild`, `Guild.add_channel/add_role/add_member`,
    `close_dms`), act as users (`slash`, `click`, `submit_modal`), observe (`messages`,
    `requests`, `commands`, `gateway_stats`, `wait_for_message`, `wait_until`) and inject
    faults (`rate_limit`, `fail`, `drop_gateway`, `expire_interaction_tokens`).
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        interaction_token_ttl_s: float = 900.0,
        callback_window_s: float = 3.0,
        heartbeat_interval_ms: int = 41250,
        bot_name: str = "imagine-bot",
    ) -> None:
        self.token = token
        self.notifier = Notifier()
        self.world = World(self.notifier, bot_name)
        self.application_owner = User(self.world.new_id(), "app-owner")
        self.world.users[self.application_owner.id] = self.application_owner
        self.gateway = Gateway(self.world, token, self.notifier, heartbeat_interval_ms)
        self.world.dispatch = self.gateway.dispatch
        self.hub = Interactions(
            self.world,
            self.gateway.deliver_interaction,
            token_ttl_s=interaction_token_ttl_s,
            callback_window_s=callback_window_s,
        )
        self.rest = RestContext(token, on_record=self.notifier.notify)
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on host:port (0 picks a free port); `url` is set afterwards."""
        app = web.Application(middlewares=[make_middleware(self.rest)], client_max_size=64 << 20)
        app.router.add_get("/gateway", self.gateway.handle)
        ControlApi(self).install(app)
        RestApi(self.world, self.hub, self.gateway, self.application_owner).install(app)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"
        self.world.base_url = self.url
        self.gateway.url = f"{_ws_url(self.url)}/gateway"

    async def close(self) -> None:
        """Close gateway connections and stop serving."""
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def patch_discord(self) -> contextlib.AbstractContextManager[None]:
        """Point discord.py at this emulator (restores the old endpoints on exit)."""
        return patch_discord(self.url)

    def endpoints(self) -> dict[str, str]:
        """The discord.py endpoints for this emulator."""
        return discord_endpoints(self.url)

    # ------------------------------------------------------------------ the world

    @property
    def bot(self) -> User:
        """The bot user (its id is also the application id)."""
        return self.world.bot

    @property
    def application_id(self) -> int:
        """The application id."""
        return self.world.application_id

    @property
    def users(self) -> dict[str, User]:
        """Users by name."""
        return self.world.users_by_name

    @property
    def guilds(self) -> list[Guild]:
        """Every guild, in creation order."""
        return list(self.world.guilds.values())

    @property
    def guild(self) -> Guild:
        """The first guild."""
        if not self.world.guilds:
            raise EmulatorError("no guild yet")
        return next(iter(self.world.guilds.values()))

    @property
    def channel(self) -> Channel:
        """The first channel of the first guild."""
        if not self.guild.channels:
            raise EmulatorError("the first guild has no channel yet")
        return self.guild.channels[0]

    def add_user(self, name: str) -> User:
        """Create a user."""
        return self.world.add_user(name)

    def add_guild(self, name: str, owner: User, *, bot_permissions: int = ALL_PERMISSIONS) -> Guild:
        """Create a guild; the owner has every permission, the bot joins with a managed role."""
        return self.world.add_guild(name, owner, bot_permissions=bot_permissions)

    def close_dms(self, user: User) -> None:
        """The user no longer accepts DMs: the bot's DMs to them fail with 403 50007."""
        user.dms_open = False

    def open_dms(self, user: User) -> None:
        """The user accepts DMs again."""
        user.dms_open = True

    def dm_channel(self, user: User) -> Channel:
        """The bot's DM channel with a user (for slash commands in DMs)."""
        return self.world.dm_channel(user)

    # ------------------------------------------------------------------ acting as users

    async def slash(
        self,
        user: User,
        channel: Channel,
        command: str,
        values: Mapping[str, Any] | None = None,
        /,
        **options: Any,
    ) -> Interaction:
        """Run "/name [group] [sub]" with options typed from the synced schema."""
        return self.hub.slash(user, channel, command, {**(values or {}), **options})

    async def click(
        self, user: User, message: Message, custom_id: str, /, values: list[str] | None = None
    ) -> Interaction:
        """Click a button (or choose select `values`) on a message."""
        return self.hub.click(user, message, custom_id, values)

    async def submit_modal(
        self, user: User, channel: Channel, custom_id: str, values: Mapping[str, str | list[str]]
    ) -> Interaction:
        """Submit a modal the bot showed this user, fields by custom id."""
        return self.hub.submit_modal(user, channel, custom_id, values)

    @property
    def callback_window_s(self) -> float:
        """How long after an interaction its callback is accepted (Discord: 3 s)."""
        return self.hub.callback_window_s

    @callback_window_s.setter
    def callback_window_s(self, value: float) -> None:
        self.hub.callback_window_s = value

    @property
    def interaction_token_ttl_s(self) -> float:
        """How long interaction tokens serve webhook calls (Discord: 15 minutes)."""
        return self.hub.token_ttl_s

    @interaction_token_ttl_s.setter
    def interaction_token_ttl_s(self, value: float) -> None:
        self.hub.token_ttl_s = value

    @property
    def interactions(self) -> list[Interaction]:
        """Every interaction issued, oldest first."""
        return list(self.hub.by_id.values())

    # ------------------------------------------------------------------ observing

    @property
    def messages(self) -> list[Message]:
        """Every message (channel, DM, interaction and webhook ones), deleted ones included."""
        return self.world.messages

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every REST request, in arrival order."""
        return self.rest.requests

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """Requests whose route is e.g. "PATCH /webhooks/{app}/{token}/messages/{id}"."""
        return [request for request in self.rest.requests if request.route == route]

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of emulator bugs (answered 500); a test should expect none."""
        return self.rest.internal_errors

    @property
    def gateway_stats(self) -> GatewayStats:
        """Gateway counters: connections, identifies, resumes, heartbeats acked..."""
        return self.gateway.stats

    def commands(self, guild_id: int | Guild | None = None) -> list[Json]:
        """The synced command schemas, global or of a guild."""
        scope = guild_id.id if isinstance(guild_id, Guild) else guild_id
        return self.world.commands.get(scope, [])

    async def wait_for_message(
        self, predicate: Callable[[Message], bool], timeout_s: float = 5.0
    ) -> Message:
        """The first message, existing or yet to be created or edited, that satisfies predicate."""

        def check() -> Message | None:
            return next((m for m in self.world.messages if predicate(m)), None)

        return await self.notifier.wait_for(check, timeout_s, "a matching message")

    async def wait_until(
        self, condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "a condition"
    ) -> None:
        """Wait until condition() holds; it is re-checked whenever the emulator's state changes."""
        await self.notifier.wait_for(lambda: True if condition() else None, timeout_s, what)

    # ------------------------------------------------------------------ faults

    def rate_limit(
        self,
        method: str,
        path_pattern: str,
        *,
        times: int = 1,
        retry_after_s: float = 0.1,
        global_: bool = False,
    ) -> Fault:
        """Answer the next `times` matching requests with 429.

        The pattern must match the whole path after /api/v10 (re.fullmatch).
        """
        fault = Fault(method.upper(), re.compile(path_pattern), times, 429, retry_after_s, global_)
        self.rest.faults.append(fault)
        return fault

    def fail(self, method: str, path_pattern: str, *, status: int = 500, times: int = 1) -> Fault:
        """Answer the next `times` matching requests with `status`."""
        fault = Fault(method.upper(), re.compile(path_pattern), times, status)
        self.rest.faults.append(fault)
        return fault

    async def drop_gateway(self, code: int = CloseCode.UNKNOWN_ERROR) -> None:
        """Close the bot's websocket (1006 cuts it abruptly); discord.py then RESUMEs."""
        await self.gateway.drop(code)

    def expire_interaction_tokens(self) -> None:
        """Every interaction token issued so far is expired (webhook calls answer 401 50027)."""
        self.hub.expire_all()


async def _not_found(request: web.Request) -> web.Response:
    return json_response({"message": "404: Not Found", "code": 0}, 404)
