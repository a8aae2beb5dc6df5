"""The emulated world: users, guilds, channels and messages, with Discord's message rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.discord_emulator.messages import Attachment, Message, number_components
from tests.discord_emulator.models import (
    ALL_PERMISSIONS,
    ATTACHMENT_SIZE_LIMIT_BYTES,
    DEFAULT_EVERYONE_PERMISSIONS,
    MAX_CONTENT_CHARS,
    ApiError,
    Channel,
    ChannelType,
    EmulatorError,
    ErrorCode,
    Guild,
    Intent,
    Json,
    Member,
    MessageFlag,
    Notifier,
    Role,
    SnowflakeGenerator,
    User,
    form_error,
    iso_now,
)

Dispatch = Callable[[str, Json, int], None]

# Which intent a guild-level event needs before Discord sends it.
_GUILD_EVENT_INTENTS = {
    "CHANNEL_CREATE": Intent.GUILDS,
    "GUILD_ROLE_CREATE": Intent.GUILDS,
    "GUILD_MEMBER_ADD": Intent.GUILD_MEMBERS,
}


@dataclass(frozen=True, slots=True)
class Upload:
    """A file sent in a multipart request (or given to an ATTACHMENT option)."""

    filename: str
    data: bytes
    content_type: str | None = None


class World:
    """Everything the emulated Discord knows, and the rules for changing messages."""

    def __init__(self, notifier: Notifier, bot_name: str = "imagine-bot") -> None:
        self.notifier = notifier
        self.ids = SnowflakeGenerator()
        self.bot = User(self.ids.next(), bot_name, bot=True)
        self.application_flags = 0
        self.base_url = "http://127.0.0.1:0"
        self.users: dict[int, User] = {self.bot.id: self.bot}
        self.users_by_name: dict[str, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.dm_channels: dict[int, Channel] = {}
        self.messages: list[Message] = []
        self.messages_by_id: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.commands: dict[int | None, list[Json]] = {None: []}
        self.dispatch: Dispatch = lambda event, data, intent: None

    @property
    def application_id(self) -> int:
        """The application's id, which is also the bot user's id."""
        return self.bot.id

    # ------------------------------------------------------------------ the world

    def new_id(self) -> int:
        """A fresh snowflake."""
        return self.ids.next()

    def add_user(self, name: str) -> User:
        """Create a user; names are unique."""
        if name in self.users_by_name:
            raise EmulatorError(f"a user named {name!r} exists already")
        user = User(self.new_id(), name)
        self.users[user.id] = user
        self.users_by_name[name] = user
        self.notifier.notify()
        return user

    def add_guild(self, name: str, owner: User, *, bot_permissions: int = ALL_PERMISSIONS) -> Guild:
        """Create a guild owned by `owner`; the bot joins it with a managed role."""
        guild = Guild(self.new_id(), name, owner.id, self)
        guild.roles.append(Role(guild.id, guild.id, "@everyone", DEFAULT_EVERYONE_PERMISSIONS))
        bot_role = Role(self.new_id(), guild.id, self.bot.name, bot_permissions, 1, self.bot.id)
        guild.roles.append(bot_role)
        guild.members[self.bot.id] = Member(self.bot, [bot_role])
        guild.members[owner.id] = Member(owner)
        self.guilds[guild.id] = guild
        # The gateway builds the full GUILD_CREATE per session (members depend on intents).
        self.dispatch("GUILD_CREATE", {"id": str(guild.id)}, Intent.GUILDS)
        self.notifier.notify()
        return guild

    def guild_changed(self, guild: Guild, event: str, data: Json) -> None:
        """Dispatch a guild event to the bot (when its intents ask for it)."""
        self.dispatch(event, data, _GUILD_EVENT_INTENTS.get(event, Intent.GUILDS))
        self.notifier.notify()

    def register_channel(self, channel: Channel) -> None:
        """Make a channel reachable by id."""
        self.channels[channel.id] = channel

    def user(self, user_id: int) -> User:
        """The user with this id; 404 Unknown User otherwise."""
        user = self.users.get(user_id)
        if user is None:
            raise ApiError(404, ErrorCode.UNKNOWN_USER, "Unknown User")
        return user

    def channel(self, channel_id: int) -> Channel:
        """The channel with this id; 404 Unknown Channel otherwise."""
        channel = self.channels.get(channel_id)
        if channel is None:
            raise ApiError(404, ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def guild(self, guild_id: int) -> Guild:
        """The guild with this id; 404 Unknown Guild otherwise."""
        guild = self.guilds.get(guild_id)
        if guild is None:
            raise ApiError(404, ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        return guild

    def guild_of(self, channel: Channel) -> Guild | None:
        """The guild a channel belongs to (None for DMs)."""
        return None if channel.guild_id is None else self.guilds[channel.guild_id]

    def dm_channel(self, user: User) -> Channel:
        """The bot's DM channel with a user, created on first use."""
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = Channel(self.new_id(), "", ChannelType.DM, recipient=user)
            self.dm_channels[user.id] = channel
            self.register_channel(channel)
        return channel

    def message(self, message_id: int) -> Message:
        """A live message; 404 Unknown Message when unknown or deleted."""
        message = self.messages_by_id.get(message_id)
        if message is None or message.deleted:
            raise ApiError(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
        return message

    # ------------------------------------------------------------------ messages

    def create_message(
        self,
        channel: Channel,
        payload: Json,
        files: dict[int, Upload],
        *,
        author: User | None = None,
        ephemeral_to: int | None = None,
        from_interaction: bool = False,
        **extra: Any,
    ) -> Message:
        """Post a message after Discord's checks (empty, too long, DMs closed, too large).

        Interaction responses skip the DM check: the user opened that conversation.
        """
        loading = bool(extra.get("flags", 0) & MessageFlag.LOADING)
        if not loading:
            _check_content(payload, files, existing=None)
        dm_closed = channel.recipient is not None and not _can_dm(channel.recipient)
        if dm_closed and not from_interaction:
            raise ApiError(
                403, ErrorCode.CANNOT_SEND_MESSAGES_TO_USER, "Cannot send messages to this user"
            )
        message = Message(
            id=self.new_id(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author or self.bot,
            ephemeral_to=ephemeral_to,
            tts=bool(payload.get("tts", False)),
            **extra,
        )
        requested = int(payload.get("flags") or 0)
        message.flags |= requested & (MessageFlag.SUPPRESS_EMBEDS | MessageFlag.IS_COMPONENTS_V2)
        if ephemeral_to is not None:
            message.flags |= MessageFlag.EPHEMERAL
        self._apply_body(message, payload, files, keep=False)
        channel.last_message_id = message.id
        self.messages.append(message)
        self.messages_by_id[message.id] = message
        message.snapshot()
        self._dispatch_message("MESSAGE_CREATE", message)
        return message

    def edit_message(self, message: Message, payload: Json, files: dict[int, Upload]) -> Message:
        """Edit a message: only attachments listed in `attachments` survive, plus new files."""
        _check_content(payload, files, existing=message)
        self._apply_body(message, payload, files, keep=True)
        if "flags" in payload and payload["flags"] is not None:
            suppress = int(payload["flags"]) & MessageFlag.SUPPRESS_EMBEDS
            message.flags = (message.flags & ~MessageFlag.SUPPRESS_EMBEDS) | suppress
        message.flags &= ~MessageFlag.LOADING
        message.edited_timestamp = iso_now()
        message.snapshot()
        self._dispatch_message("MESSAGE_UPDATE", message)
        return message

    def delete_message(self, message: Message) -> None:
        """Delete a message (it stays in `messages` with deleted=True)."""
        message.deleted = True
        if message.ephemeral_to is None:
            data: Json = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            self.dispatch("MESSAGE_DELETE", data, _message_intent(message))
        self.notifier.notify()

    def store_upload(self, channel_id: int, upload: Upload, *, ephemeral: bool) -> Attachment:
        """Keep an uploaded file on the CDN and describe it as an attachment."""
        if len(upload.data) > ATTACHMENT_SIZE_LIMIT_BYTES:
            raise ApiError(413, ErrorCode.REQUEST_ENTITY_TOO_LARGE, "Request entity too large")
        attachment_id = self.new_id()
        url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{upload.filename}"
        attachment = Attachment(attachment_id, upload.filename, upload.data, url)
        attachment.ephemeral = ephemeral
        self.attachments[attachment_id] = attachment
        return attachment

    def _apply_body(
        self, message: Message, payload: Json, files: dict[int, Upload], *, keep: bool
    ) -> None:
        # Uploads first: a file that is too large must leave the message untouched.
        message.attachments = self._attachments(message, payload, files, keep=keep)
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = payload["embeds"] or []
        if "components" in payload:
            message.components = number_components(payload["components"] or [])

    def _attachments(
        self, message: Message, payload: Json, files: dict[int, Upload], *, keep: bool
    ) -> list[Attachment]:
        existing = {a.id: a for a in message.attachments} if keep else {}
        listed = payload.get("attachments")
        if listed is None:
            kept = list(existing.values())
            wanted = [(index, None) for index in sorted(files)]
        else:
            kept = [existing[int(a["id"])] for a in listed if int(a["id"]) in existing]
            wanted = [(int(a["id"]), a) for a in listed if int(a["id"]) in files]
            wanted += [(i, None) for i in sorted(files) if i not in {w[0] for w in wanted}]
        new = []
        for index, meta in wanted:
            upload = files[index]
            if meta is not None and meta.get("filename"):
                upload = Upload(meta["filename"], upload.data, upload.content_type)
            attachment = self.store_upload(
                message.channel_id, upload, ephemeral=message.ephemeral_to is not None
            )
            attachment.description = None if meta is None else meta.get("description")
            new.append(attachment)
        return kept + new

    def _dispatch_message(self, event: str, message: Message) -> None:
        if message.ephemeral_to is None:
            data = message.payload()
            guild = self.guilds.get(message.guild_id or 0)
            if guild is not None and message.author.id in guild.members:
                data["member"] = guild.members[message.author.id].payload(with_user=False)
            self.dispatch(event, data, _message_intent(message))
        self.notifier.notify()

    # ------------------------------------------------------------------ visibility

    def visible_messages(self, channel_id: int) -> list[Message]:
        """Live, non-ephemeral messages of a channel, oldest first."""
        return [
            m
            for m in self.messages
            if m.channel_id == channel_id and not m.deleted and m.ephemeral_to is None
        ]


def _message_intent(message: Message) -> int:
    return Intent.GUILD_MESSAGES if message.guild_id is not None else Intent.DIRECT_MESSAGES


def _can_dm(user: User) -> bool:
    # Bots cannot open DMs with other bots, and users can close theirs.
    return user.dms_open and not user.bot


def _check_content(payload: Json, files: dict[int, Upload], *, existing: Message | None) -> None:
    content = payload.get("content")
    if content is not None and len(content) > MAX_CONTENT_CHARS:
        raise form_error(
            "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_CHARS} or fewer in length."
        )
    if len(payload.get("embeds") or []) > 10:
        raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    if len(files) > 10:
        raise form_error("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    if _is_empty(payload, files, existing):
        raise ApiError(400, ErrorCode.CANNOT_SEND_EMPTY_MESSAGE, "Cannot send an empty message")


def _is_empty(payload: Json, files: dict[int, Upload], existing: Message | None) -> bool:
    def pick(key: str, current: Any) -> Any:
        return payload.get(key, current)

    content = pick("content", existing.content if existing else "")
    embeds = pick("embeds", existing.embeds if existing else [])
    components = pick("components", existing.components if existing else [])
    listed = payload.get("attachments")
    if listed is None:
        kept_any = bool(existing and existing.attachments)
    else:
        ids = {a.id for a in existing.attachments} if existing else set()
        kept_any = any(int(a["id"]) in ids for a in listed)
    has_files = bool(files) or kept_any
    stickers = payload.get("sticker_ids") or payload.get("poll")
    return not (content or embeds or components or has_files or stickers)
