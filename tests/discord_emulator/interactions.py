"""Interactions: slash commands, clicks, modal submits; the bot's callbacks and follow-ups."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from tests.discord_emulator.commands import build_invocation
from tests.discord_emulator.messages import Message, number_components
from tests.discord_emulator.models import (
    ATTACHMENT_SIZE_LIMIT_BYTES,
    DEFAULT_EVERYONE_PERMISSIONS,
    ApiError,
    Channel,
    EmulatorError,
    ErrorCode,
    Guild,
    Json,
    MessageFlag,
    Notifier,
    User,
    form_error,
)
from tests.discord_emulator.world import Upload, World


class InteractionType(IntEnum):
    """Interaction types users cause."""

    APPLICATION_COMMAND = 2
    MESSAGE_COMPONENT = 3
    MODAL_SUBMIT = 5


class CallbackType(IntEnum):
    """Interaction callback (response) types."""

    PONG = 1
    CHANNEL_MESSAGE = 4
    DEFERRED_CHANNEL_MESSAGE = 5
    DEFERRED_UPDATE_MESSAGE = 6
    UPDATE_MESSAGE = 7
    AUTOCOMPLETE_RESULT = 8
    MODAL = 9


_ALLOWED_CALLBACKS = {
    InteractionType.APPLICATION_COMMAND: {4, 5, 9},
    InteractionType.MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
    InteractionType.MODAL_SUBMIT: {4, 5, 6, 7},
}
_SELECT_TYPES = {3, 5, 6, 7, 8}


@dataclass(eq=False)
class Interaction:
    """One interaction a user caused, and everything the bot answered to it.

    `payload` is the INTERACTION_CREATE sent to the bot; `message` the clicked message (or the
    one a modal's source interaction was on). `response_type` / `response_data` come from the
    accepted callback; `rejected` lists the error codes of refused ones (40060, 10062).
    `original()` is the response message; `followups` are the messages created by
    ``POST /webhooks/{app}/{token}``, except the first one after a type-5 deferral, which
    replaces the "thinking" original instead (as Discord does).
    """

    id: int
    token: str
    type: InteractionType
    user: User
    channel: Channel
    guild: Guild | None
    payload: Json
    created_s: float
    notifier: Notifier = field(repr=False)
    message: Message | None = None
    response_type: int | None = None
    response_data: Json | None = None
    ephemeral: bool = False
    modal: Json | None = None
    modal_submitted: bool = False
    followups: list[Message] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    expired: bool = False
    original_message: Message | None = None

    @property
    def responded(self) -> bool:
        """Whether a callback was accepted."""
        return self.response_type is not None

    def original(self) -> Message | None:
        """The message of the response: created by a type 4/5, or the clicked one for 6/7."""
        return self.original_message

    async def wait_response(self, timeout_s: float = 5.0) -> Interaction:
        """Wait until the bot's callback was accepted; returns self."""
        what = f"a callback to interaction {self.id}"
        await self.notifier.wait_for(lambda: self if self.responded else None, timeout_s, what)
        return self


class Interactions:
    """Issues interactions to the bot and serves its callbacks and webhook calls."""

    def __init__(
        self,
        world: World,
        deliver: Callable[[Json], None],
        *,
        token_ttl_s: float,
        callback_window_s: float,
    ) -> None:
        self.world = world
        self.deliver = deliver
        self.token_ttl_s = token_ttl_s
        self.callback_window_s = callback_window_s
        self.by_id: dict[int, Interaction] = {}
        self.by_token: dict[str, Interaction] = {}

    # ------------------------------------------------------------------ users act

    def slash(
        self, user: User, channel: Channel, path: str, values: Mapping[str, Any]
    ) -> Interaction:
        """A user runs a slash command, options typed from the synced schema."""
        invocation = build_invocation(self.world, user, channel, path, values)
        return self._issue(InteractionType.APPLICATION_COMMAND, user, channel, invocation.data)

    def click(
        self, user: User, message: Message, custom_id: str, values: list[str] | None = None
    ) -> Interaction:
        """A user clicks a button (or picks `values` in a select) on a message."""
        if message.deleted:
            raise EmulatorError(f"message {message.id} was deleted")
        if message.ephemeral_to not in (None, user.id):
            raise EmulatorError(f"{user.name} cannot see ephemeral message {message.id}")
        component = message.component(custom_id)
        if component.get("disabled"):
            raise EmulatorError(f"component {custom_id!r} is disabled")
        data: Json = {
            "custom_id": custom_id,
            "component_type": component["type"],
            "id": component.get("id"),
        }
        if component["type"] in _SELECT_TYPES:
            data["values"] = list(values or [])
        channel = self.world.channel(message.channel_id)
        return self._issue(InteractionType.MESSAGE_COMPONENT, user, channel, data, message)

    def submit_modal(
        self, user: User, channel: Channel, custom_id: str, values: Mapping[str, str | list[str]]
    ) -> Interaction:
        """A user submits a modal the bot showed them (fields by custom id)."""
        source = self._shown_modal(user, custom_id)
        if source.channel is not channel:
            raise EmulatorError(f"modal {custom_id!r} was shown in another channel")
        assert source.modal is not None
        remaining = dict(values)
        answers = _modal_answers(source.modal["components"], remaining)
        if remaining:
            raise EmulatorError(f"modal {custom_id!r} has no fields {sorted(remaining)}")
        source.modal_submitted = True
        data = {"custom_id": custom_id, "components": answers}
        return self._issue(InteractionType.MODAL_SUBMIT, user, channel, data, source.message)

    def expire_all(self) -> None:
        """Every token issued so far is past Discord's 15 minutes."""
        for interaction in self.by_id.values():
            interaction.expired = True

    def _shown_modal(self, user: User, custom_id: str) -> Interaction:
        for interaction in reversed(list(self.by_id.values())):
            modal = interaction.modal
            shown = modal is not None and modal.get("custom_id") == custom_id
            if interaction.user is user and shown and not interaction.modal_submitted:
                return interaction
        raise EmulatorError(f"no open modal {custom_id!r} was shown to {user.name}")

    def _issue(
        self,
        kind: InteractionType,
        user: User,
        channel: Channel,
        data: Json,
        message: Message | None = None,
    ) -> Interaction:
        guild = self.world.guild_of(channel)
        if guild is not None and user.id not in guild.members:
            raise EmulatorError(f"{user.name} is not a member of {guild.name!r}")
        ix_id = self.world.new_id()
        token = secrets.token_urlsafe(48)
        payload = self._payload(ix_id, token, kind, user, channel, guild, data)
        if message is not None:
            payload["message"] = message.payload()
        interaction = Interaction(
            ix_id, token, kind, user, channel, guild, payload, time.monotonic(),
            self.world.notifier, message,
        )  # fmt: skip
        self.by_id[ix_id] = interaction
        self.by_token[token] = interaction
        self.deliver(payload)
        return interaction

    def _payload(
        self,
        ix_id: int,
        token: str,
        kind: InteractionType,
        user: User,
        channel: Channel,
        guild: Guild | None,
        data: Json,
    ) -> Json:
        world = self.world
        payload: Json = {
            "id": str(ix_id),
            "application_id": str(world.application_id),
            "type": int(kind),
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT_BYTES,
            "authorizing_integration_owners": {"0": str(guild.id) if guild else "0"},
            "context": 0 if guild else 1,
        }
        if guild is None:
            payload["user"] = user.payload()
            payload["app_permissions"] = str(DEFAULT_EVERYONE_PERMISSIONS)
            return payload
        permissions = guild.permissions_of(user.id)
        payload["channel"]["permissions"] = str(permissions)
        payload["app_permissions"] = str(guild.permissions_of(world.bot.id))
        payload["guild_id"] = str(guild.id)
        payload["guild"] = {"id": str(guild.id), "locale": "en-US", "features": []}
        payload["guild_locale"] = "en-US"
        payload["member"] = guild.members[user.id].payload(permissions=permissions)
        return payload

    # ------------------------------------------------------------------ the bot answers

    def callback(self, ix_id: int, token: str, body: Json, files: dict[int, Upload]) -> Json:
        """POST /interactions/{id}/{token}/callback with Discord's 3-second and once-only rules."""
        interaction = self.by_id.get(ix_id)
        if interaction is None or interaction.token != token:
            raise ApiError(404, ErrorCode.UNKNOWN_INTERACTION, "Unknown interaction")
        if interaction.responded:
            interaction.rejected.append(ErrorCode.INTERACTION_ALREADY_ACKNOWLEDGED)
            raise ApiError(
                400,
                ErrorCode.INTERACTION_ALREADY_ACKNOWLEDGED,
                "Interaction has already been acknowledged.",
            )
        late = time.monotonic() - interaction.created_s > self.callback_window_s
        if late or interaction.expired:
            interaction.rejected.append(ErrorCode.UNKNOWN_INTERACTION)
            raise ApiError(404, ErrorCode.UNKNOWN_INTERACTION, "Unknown interaction")
        kind = body.get("type")
        allowed = _ALLOWED_CALLBACKS[interaction.type]
        if kind not in allowed or (kind in (6, 7) and interaction.message is None):
            raise form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type")
        data = body.get("data") or {}
        message = self._respond(interaction, CallbackType(kind), data, files)
        interaction.response_type = kind
        interaction.response_data = data
        self.world.notifier.notify()
        return _callback_body(interaction, kind, message)

    def _respond(
        self, interaction: Interaction, kind: CallbackType, data: Json, files: dict[int, Upload]
    ) -> Message | None:
        if kind is CallbackType.MODAL:
            _check_modal(data)
            modal = copy.deepcopy(data)
            number_components(modal["components"])
            interaction.modal = modal
            return None
        if kind in (CallbackType.DEFERRED_UPDATE_MESSAGE, CallbackType.UPDATE_MESSAGE):
            assert interaction.message is not None
            if kind is CallbackType.UPDATE_MESSAGE:
                self.world.edit_message(interaction.message, data, files)
            interaction.original_message = interaction.message
            interaction.ephemeral = interaction.message.ephemeral_to is not None
            return interaction.message
        interaction.ephemeral = bool(int(data.get("flags") or 0) & MessageFlag.EPHEMERAL)
        if kind is CallbackType.DEFERRED_CHANNEL_MESSAGE:
            data, files, flags = {}, {}, int(MessageFlag.LOADING)
        else:
            flags = 0
        message = self._post(interaction, data, files, ephemeral=interaction.ephemeral, flags=flags)
        interaction.original_message = message
        return message

    def _post(
        self,
        interaction: Interaction,
        data: Json,
        files: dict[int, Upload],
        *,
        ephemeral: bool,
        flags: int,
    ) -> Message:
        command = interaction.type is InteractionType.APPLICATION_COMMAND
        metadata: Json = {
            "id": str(interaction.id),
            "type": int(interaction.type),
            "user": interaction.user.payload(),
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        if interaction.message is not None:
            metadata["interacted_message_id"] = str(interaction.message.id)
        return self.world.create_message(
            interaction.channel,
            data,
            files,
            ephemeral_to=interaction.user.id if ephemeral else None,
            from_interaction=True,
            flags=flags,
            type=20 if command and interaction.original_message is None else 0,
            interaction_token=interaction.token,
            interaction_metadata=metadata,
            webhook_id=self.world.application_id,
        )

    # ------------------------------------------------------------------ webhook follow-ups

    def by_webhook(self, application_id: int, token: str) -> Interaction:
        """The interaction a webhook URL names; 401 50027 once its token is past the TTL."""
        if application_id != self.world.application_id:
            raise ApiError(404, ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")
        interaction = self.by_token.get(token)
        if interaction is None or interaction.expired or self._past_ttl(interaction):
            raise ApiError(401, ErrorCode.INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return interaction

    def _past_ttl(self, interaction: Interaction) -> bool:
        return time.monotonic() - interaction.created_s > self.token_ttl_s

    def execute(self, interaction: Interaction, body: Json, files: dict[int, Upload]) -> Message:
        """A follow-up; the first one after a type-5 deferral replaces the "thinking" message."""
        if not interaction.responded:
            raise ApiError(404, ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")
        original = interaction.original_message
        if original is not None and original.loading and not original.deleted:
            # The deferral decided visibility; the follow-up's own flags cannot change it.
            body = {key: value for key, value in body.items() if key != "flags"}
            return self.world.edit_message(original, body, files)
        ephemeral = bool(int(body.get("flags") or 0) & MessageFlag.EPHEMERAL)
        message = self._post(interaction, body, files, ephemeral=ephemeral, flags=0)
        interaction.followups.append(message)
        return message

    def webhook_message(self, interaction: Interaction, reference: str) -> Message:
        """`@original` or a message id that belongs to this interaction's webhook."""
        if reference == "@original":
            message = interaction.original_message
        else:
            message = self.world.messages_by_id.get(_snowflake(reference))
            if message is not None and message is not interaction.original_message:
                message = message if message.interaction_token == interaction.token else None
        if message is None or message.deleted:
            raise ApiError(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
        return message


def _snowflake(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(404, ErrorCode.UNKNOWN_MESSAGE, "Unknown Message") from None


def _callback_body(interaction: Interaction, kind: int, message: Message | None) -> Json:
    summary: Json = {
        "id": str(interaction.id),
        "type": int(interaction.type),
        "response_message_loading": kind == CallbackType.DEFERRED_CHANNEL_MESSAGE,
        "response_message_ephemeral": interaction.ephemeral,
    }
    body: Json = {"interaction": summary}
    if message is not None and kind != CallbackType.DEFERRED_UPDATE_MESSAGE:
        summary["response_message_id"] = str(message.id)
        body["resource"] = {"type": kind, "message": message.payload()}
    return body


def _check_modal(data: Json) -> None:
    if not data.get("custom_id"):
        raise form_error("data.custom_id", "BASE_TYPE_REQUIRED", "This field is required")
    if not data.get("title"):
        raise form_error("data.title", "BASE_TYPE_REQUIRED", "This field is required")
    if not 1 <= len(data.get("components") or []) <= 5:
        raise form_error("data.components", "BASE_TYPE_BAD_LENGTH", "Must be 1 to 5 components")


def _modal_answers(components: list[Json], values: dict[str, str | list[str]]) -> list[Json]:
    answers: list[Json] = []
    for component in components:
        kind = component["type"]
        if kind == 1:
            inner = _modal_answers(component.get("components") or [], values)
            answers.append({"type": 1, "id": component.get("id"), "components": inner})
        elif kind == 18:
            inner = _modal_answers([component["component"]], values)
            answers.append({"type": 18, "id": component.get("id"), "component": inner[0]})
        elif "custom_id" in component:
            answers.append(_modal_answer(component, values))
        else:
            answers.append({"type": kind, "id": component.get("id")})
    return answers


def _modal_answer(component: Json, values: dict[str, str | list[str]]) -> Json:
    custom_id = component["custom_id"]
    value = values.pop(custom_id, None)
    answer: Json = {"type": component["type"], "id": component.get("id"), "custom_id": custom_id}
    if component["type"] != 4:
        answer["values"] = [] if value is None else list(value)
        return answer
    text = "" if value is None else str(value)
    if component.get("required", True) and not text:
        raise EmulatorError(f"modal field {custom_id!r} is required")
    shortest, longest = component.get("min_length") or 0, component.get("max_length") or 4000
    if text and not shortest <= len(text) <= longest:
        raise EmulatorError(f"modal field {custom_id!r} must be {shortest}..{longest} characters")
    answer["value"] = text
    return answer
