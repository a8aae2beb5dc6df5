"""Messages and their attachments, as the emulator stores them and Discord sends them."""

from __future__ import annotations

import itertools
import mimetypes
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.discord_emulator.models import EmulatorError, Json, MessageFlag, User, iso_now


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG from its IHDR chunk, None for anything else."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


@dataclass(eq=False)
class Attachment:
    """An uploaded file, served back from the emulator's CDN at `url`."""

    id: int
    filename: str
    data: bytes
    url: str
    description: str | None = None
    ephemeral: bool = False

    @property
    def content_type(self) -> str | None:
        """The MIME type Discord infers from the file name."""
        return mimetypes.guess_type(self.filename)[0]

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)

    @property
    def width(self) -> int | None:
        """Image width in pixels when the emulator can tell (PNG), else None."""
        size = png_size(self.data)
        return None if size is None else size[0]

    @property
    def height(self) -> int | None:
        """Image height in pixels when the emulator can tell (PNG), else None."""
        size = png_size(self.data)
        return None if size is None else size[1]

    def payload(self) -> Json:
        """The attachment object as Discord sends it."""
        data: Json = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.width is not None:
            data["width"], data["height"] = self.width, self.height
        if self.description is not None:
            data["description"] = self.description
        if self.ephemeral:
            data["ephemeral"] = True
        return data


def walk_components(components: list[Json]) -> Iterator[Json]:
    """Every component, nested ones (rows, sections, containers, labels) included."""
    for component in components:
        yield component
        yield from walk_components(component.get("components", []))
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                yield from walk_components([component[key]])


def number_components(components: list[Json]) -> list[Json]:
    """Give every component without one a numeric `id`, as Discord does when storing."""
    used = {c["id"] for c in walk_components(components) if isinstance(c.get("id"), int)}
    fresh = (n for n in itertools.count(1) if n not in used)
    for component in walk_components(components):
        if not isinstance(component.get("id"), int):
            component["id"] = next(fresh)
    return components


@dataclass(eq=False)
class Message:
    """A message in a channel or DM, posted by the bot or through an interaction.

    `edits` holds (time.monotonic(), message payload) after the create and after every edit.
    `ephemeral_to` is the only user who sees an ephemeral message; `interaction_token` the
    token of the interaction whose webhook created it.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[Json] = field(default_factory=list)
    components: list[Json] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    ephemeral_to: int | None = None
    interaction_token: str | None = None
    interaction_metadata: Json | None = None
    webhook_id: int | None = None
    tts: bool = False
    deleted: bool = False
    timestamp: str = field(default_factory=iso_now)
    edited_timestamp: str | None = None
    edits: list[tuple[float, Json]] = field(default_factory=list)

    @property
    def author_id(self) -> int:
        """The author's user id."""
        return self.author.id

    @property
    def loading(self) -> bool:
        """Whether this is a deferred response still "thinking"."""
        return bool(self.flags & MessageFlag.LOADING)

    def custom_ids(self) -> list[str]:
        """The custom ids of every interactive component, in order."""
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def component(self, custom_id: str) -> Json:
        """The component with this custom id."""
        for component in walk_components(self.components):
            if component.get("custom_id") == custom_id:
                return component
        raise EmulatorError(f"message {self.id} has no component {custom_id!r}")

    def snapshot(self) -> None:
        """Record the current payload in `edits` (called on create and on every edit)."""
        self.edits.append((time.monotonic(), self.payload()))

    def payload(self) -> Json:
        """The message object as Discord sends it."""
        data: Json = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [attachment.payload() for attachment in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "reactions": [],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        return data
