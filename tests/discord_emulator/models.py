"""The emulated world's objects and the JSON payloads Discord builds from them."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol, TypeVar

Json = dict[str, Any]
T = TypeVar("T")

DISCORD_EPOCH_MS = 1_420_070_400_000
# Every permission bit Discord defined at API v10 (discord.py 2.7's Permissions.all()).
ALL_PERMISSIONS = 8_866_461_766_385_663
ADMINISTRATOR = 1 << 3
# What a new guild's @everyone role may do: view, send, history, embeds, files, reactions,
# external emojis, application commands.
DEFAULT_EVERYONE_PERMISSIONS = (
    (1 << 10) | (1 << 11) | (1 << 16) | (1 << 14) | (1 << 15) | (1 << 6) | (1 << 18) | (1 << 31)
)
ATTACHMENT_SIZE_LIMIT_BYTES = 10 * 1024 * 1024
MAX_CONTENT_CHARS = 2000


class ChannelType(IntEnum):
    """Discord channel types the emulator creates."""

    GUILD_TEXT = 0
    DM = 1


class MessageFlag(IntEnum):
    """Message flag bits the emulator gives meaning to."""

    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    IS_COMPONENTS_V2 = 1 << 15


class Intent(IntEnum):
    """Gateway intent bits that decide which dispatches a session receives."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12


class ErrorCode(IntEnum):
    """The JSON error codes Discord answers with, as the emulator uses them."""

    GENERAL = 0
    UNKNOWN_APPLICATION = 10002
    UNKNOWN_CHANNEL = 10003
    UNKNOWN_GUILD = 10004
    UNKNOWN_MEMBER = 10007
    UNKNOWN_MESSAGE = 10008
    UNKNOWN_USER = 10013
    UNKNOWN_WEBHOOK = 10015
    UNKNOWN_APPLICATION_COMMAND = 10063
    UNKNOWN_INTERACTION = 10062
    REQUEST_ENTITY_TOO_LARGE = 40005
    INTERACTION_ALREADY_ACKNOWLEDGED = 40060
    CANNOT_EDIT_OTHERS_MESSAGE = 50005
    CANNOT_SEND_EMPTY_MESSAGE = 50006
    CANNOT_SEND_MESSAGES_TO_USER = 50007
    INVALID_WEBHOOK_TOKEN = 50027
    INVALID_RECIPIENTS = 50033
    INVALID_FORM_BODY = 50035


class EmulatorError(Exception):
    """A test asked the emulator for something Discord would not let a user do."""


class ApiError(Exception):
    """A REST error answer: HTTP status plus Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str, errors: Json | None = None) -> None:
        super().__init__(f"{status} {message} (code {code})")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> Json:
        """The JSON body Discord sends for this error."""
        body: Json = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def form_error(field_name: str, code: str, message: str) -> ApiError:
    """A 400 Invalid Form Body naming one field, shaped like Discord's nested errors."""
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return ApiError(400, ErrorCode.INVALID_FORM_BODY, "Invalid Form Body", errors)


class SnowflakeGenerator:
    """Discord-shaped, strictly increasing ids (discord.py derives created_at from them)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        """A new id, larger than every id handed out before."""
        now_ms = int(time.time() * 1000)
        candidate = ((now_ms - DISCORD_EPOCH_MS) << 22) | (1 << 17)
        self._last = max(candidate, self._last + 1)
        return self._last


def iso_now() -> str:
    """The current UTC time in Discord's ISO 8601 form."""
    return datetime.datetime.now(datetime.UTC).isoformat()


class Notifier:
    """Wakes every waiter whenever the world changes; waiters re-check their condition."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        """Wake every pending waiter."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, check: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Return check()'s first non-None result; TimeoutError naming `what` otherwise."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    result = check()
                    if result is not None:
                        return result
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}") from None


@dataclass(eq=False)
class User:
    """A Discord user (or the bot itself when `bot` is true)."""

    id: int
    name: str
    bot: bool = False
    dms_open: bool = True

    def payload(self) -> Json:
        """The user object as Discord sends it."""
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": None if self.bot else self.name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass(eq=False)
class Role:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    bot_id: int | None = None

    def payload(self) -> Json:
        """The role object as Discord sends it."""
        data: Json = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.bot_id is not None,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(eq=False)
class Channel:
    """A guild text channel or a DM channel with one user."""

    id: int
    name: str
    type: ChannelType
    guild_id: int | None = None
    position: int = 0
    recipient: User | None = None
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        """Whether this is a direct-message channel."""
        return self.type is ChannelType.DM

    def payload(self) -> Json:
        """The channel object as Discord sends it."""
        last = None if self.last_message_id is None else str(self.last_message_id)
        if self.recipient is not None:
            return {
                "id": str(self.id),
                "type": int(self.type),
                "last_message_id": last,
                "recipients": [self.recipient.payload()],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": int(self.type),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "parent_id": None,
            "nsfw": False,
            "topic": None,
            "last_message_id": last,
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclass(eq=False)
class Member:
    """A user's membership of a guild."""

    user: User
    roles: list[Role] = field(default_factory=list)
    joined_at: str = field(default_factory=iso_now)

    def payload(self, *, with_user: bool = True, permissions: int | None = None) -> Json:
        """The guild member object; interaction members also carry their permissions."""
        data: Json = {
            "roles": [str(role.id) for role in self.roles],
            "joined_at": self.joined_at,
            "nick": None,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


class WorldHooks(Protocol):
    """What a guild tells the world when it grows (ids, registration, gateway events)."""

    def new_id(self) -> int:
        """A fresh snowflake."""
        ...

    def guild_changed(self, guild: Guild, event: str, data: Json) -> None:
        """Register new objects and dispatch the gateway event."""
        ...

    def register_channel(self, channel: Channel) -> None:
        """Make a channel reachable by id."""
        ...


@dataclass(eq=False)
class Guild:
    """A guild with its roles, text channels and members."""

    id: int
    name: str
    owner_id: int
    hooks: WorldHooks
    roles: list[Role] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def everyone(self) -> Role:
        """The @everyone role (its id is the guild's id)."""
        return self.roles[0]

    def add_channel(self, name: str) -> Channel:
        """Create a text channel."""
        channel = Channel(
            id=self.hooks.new_id(),
            name=name,
            type=ChannelType.GUILD_TEXT,
            guild_id=self.id,
            position=len(self.channels),
        )
        self.channels.append(channel)
        self.hooks.register_channel(channel)
        self.hooks.guild_changed(self, "CHANNEL_CREATE", channel.payload())
        return channel

    def add_role(self, name: str, permissions: int = 0) -> Role:
        """Create a role with a permissions integer (e.g. manage_guild = 1 << 5)."""
        role = Role(self.hooks.new_id(), self.id, name, permissions, position=len(self.roles))
        self.roles.append(role)
        self.hooks.guild_changed(
            self, "GUILD_ROLE_CREATE", {"guild_id": str(self.id), "role": role.payload()}
        )
        return role

    def add_member(self, user: User, roles: list[Role] | tuple[Role, ...] = ()) -> Member:
        """Make a user a member, with roles of this guild."""
        for role in roles:
            if role not in self.roles:
                raise EmulatorError(f"role {role.name!r} is not a role of guild {self.name!r}")
        member = Member(user, list(roles))
        self.members[user.id] = member
        data = member.payload() | {"guild_id": str(self.id)}
        self.hooks.guild_changed(self, "GUILD_MEMBER_ADD", data)
        return member

    def channel(self, name: str) -> Channel:
        """The channel called `name`."""
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise EmulatorError(f"no channel {name!r} in guild {self.name!r}")

    def permissions_of(self, user_id: int) -> int:
        """A member's guild-wide permissions: owner and administrators have them all."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members.get(user_id)
        permissions = self.everyone.permissions
        for role in member.roles if member else ():
            permissions |= role.permissions
        return ALL_PERMISSIONS if permissions & ADMINISTRATOR else permissions

    def create_payload(self, bot_id: int, *, all_members: bool) -> Json:
        """GUILD_CREATE: without GUILD_PRESENCES, `members` holds only the bot (as Discord)."""
        members = [m for m in self.members.values() if all_members or m.user.id == bot_id]
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(self.owner_id),
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "joined_at": self.members[bot_id].joined_at if bot_id in self.members else iso_now(),
            "roles": [role.payload() for role in self.roles],
            "channels": [channel.payload() for channel in self.channels],
            "members": [member.payload() for member in members],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "emojis": [],
            "stickers": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "features": [],
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
        }


class Auth(StrEnum):
    """How a REST request proved who it was."""

    BOT = "bot"
    INVALID = "invalid bot token"
    NONE = "none"
    INTERACTION_TOKEN = "interaction token"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One REST request as the emulator answered it."""

    method: str
    path: str
    route: str | None
    status: int
    time_s: float
    auth: Auth
    query: dict[str, str]
    body: Any
    files: tuple[str, ...]

    @property
    def implemented(self) -> bool:
        """False for requests to routes the emulator does not know."""
        return self.route is not None


@dataclass
class GatewayStats:
    """Counters of what happened on the gateway; close_codes lists the codes it closed with."""

    connections: int = 0
    identifies: int = 0
    resumes: int = 0
    heartbeats_acked: int = 0
    invalid_sessions: int = 0
    dispatches: int = 0
    drops: int = 0
    close_codes: list[int] = field(default_factory=list)
