"""Application commands: Discord's checks on synced schemas, and typed slash invocations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from tests.discord_emulator.models import (
    ALL_PERMISSIONS,
    Channel,
    EmulatorError,
    Guild,
    Json,
    Role,
    User,
    form_error,
)
from tests.discord_emulator.world import Upload, World

_NAME = re.compile(r"^[-_'\w]{1,32}$")


class OptionType(IntEnum):
    """Application command option types."""

    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


_SUBCOMMANDS = (OptionType.SUB_COMMAND, OptionType.SUB_COMMAND_GROUP)


# --------------------------------------------------------------------------- storing


def store_commands(world: World, guild_id: int | None, commands: Any) -> list[Json]:
    """Bulk overwrite: validate like Discord, keep ids of commands with the same name and type."""
    if not isinstance(commands, list):
        raise form_error("_root", "LIST_TYPE_CONVERT", "Must be an array.")
    if len(commands) > 100:
        raise form_error("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
    seen: set[tuple[str, int]] = set()
    previous = {(c["name"], c["type"]): c["id"] for c in world.commands.get(guild_id, [])}
    version = str(world.new_id())
    stored = []
    for index, command in enumerate(commands):
        kind = int(command.get("type") or 1)
        _check_command(command, kind, f"{index}")
        key = (command["name"], kind)
        if key in seen:
            raise form_error(f"{index}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME", "duplicate")
        seen.add(key)
        stored.append(_stored(world, command, kind, previous.get(key), guild_id, version))
    world.commands[guild_id] = stored
    world.notifier.notify()
    return stored


def _stored(
    world: World, command: Json, kind: int, old_id: str | None, guild_id: int | None, version: str
) -> Json:
    permissions = command.get("default_member_permissions")
    data = {
        "id": old_id or str(world.new_id()),
        "application_id": str(world.application_id),
        "version": version,
        "type": kind,
        "name": command["name"],
        "description": command.get("description") or "",
        "options": command.get("options") or [],
        "default_member_permissions": None if permissions is None else str(permissions),
        "dm_permission": command.get("dm_permission", True),
        "contexts": command.get("contexts"),
        "integration_types": command.get("integration_types") or [0],
        "nsfw": bool(command.get("nsfw", False)),
        "name_localizations": command.get("name_localizations"),
        "description_localizations": command.get("description_localizations"),
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    return data


def _check_command(command: Json, kind: int, where: str) -> None:
    name = command.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise form_error(f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name")
    if kind == 1:
        if name != name.lower():
            raise form_error(f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Lowercase")
        _check_description(command, where)
        _check_options(command.get("options") or [], f"{where}.options", depth=0)


def _check_description(item: Json, where: str) -> None:
    description = item.get("description")
    if not isinstance(description, str) or not 1 <= len(description) <= 100:
        raise form_error(
            f"{where}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
        )


def _check_options(options: list[Json], where: str, depth: int) -> None:
    if len(options) > 25:
        raise form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    optional_seen = False
    for index, option in enumerate(options):
        here = f"{where}.{index}"
        name = option.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name != name.lower():
            raise form_error(f"{here}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name")
        _check_description(option, here)
        kind = OptionType(int(option["type"]))
        if kind in _SUBCOMMANDS:
            if depth >= (1 if kind is OptionType.SUB_COMMAND_GROUP else 2):
                raise form_error(f"{here}.type", "APPLICATION_COMMAND_OPTION_TYPE", "Nesting")
            _check_options(option.get("options") or [], f"{here}.options", depth + 1)
            continue
        if len(option.get("choices") or []) > 25:
            raise form_error(f"{here}.choices", "BASE_TYPE_MAX_LENGTH", "Too many choices")
        if option.get("required"):
            if optional_seen:
                raise form_error(
                    here, "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID", "Required options first"
                )
        else:
            optional_seen = True


# --------------------------------------------------------------------------- invoking


@dataclass
class Invocation:
    """A resolved slash command: the stored schema and the interaction's `data`."""

    command: Json
    data: Json
    resolved: dict[str, dict[str, Json]] = field(default_factory=dict)


def find_command(world: World, name: str, guild: Guild | None) -> Json:
    """The chat-input command a user in this place can see (guild commands first)."""
    scopes: list[int | None] = [guild.id, None] if guild is not None else [None]
    for scope in scopes:
        for command in world.commands.get(scope, []):
            if command["name"] == name and command["type"] == 1:
                return command
    where = f"guild {guild.name!r}" if guild else "DMs"
    raise EmulatorError(f"no synced command /{name} is available in {where}")


def check_available(command: Json, user: User, guild: Guild | None) -> None:
    """Refuse what Discord's client would hide: DM-less commands, missing permissions."""
    if guild is None:
        contexts = command.get("contexts")
        if not command.get("dm_permission", True) or (contexts is not None and 1 not in contexts):
            raise EmulatorError(f"/{command['name']} cannot be used in DMs")
        return
    required = command.get("default_member_permissions")
    if required is None:
        return
    have = guild.permissions_of(user.id)
    if have == ALL_PERMISSIONS:
        return
    need = int(required)
    if need == 0 or have & need != need:
        raise EmulatorError(f"{user.name} lacks the permissions /{command['name']} requires")


def build_invocation(
    world: World, user: User, channel: Channel, path: str, values: Mapping[str, Any]
) -> Invocation:
    """Type a slash command's options from the synced schema, as Discord's client does."""
    guild = world.guild_of(channel)
    words = path.split()
    if not words:
        raise EmulatorError("empty command")
    command = find_command(world, words[0], guild)
    check_available(command, user, guild)
    invocation = Invocation(command, {"id": command["id"], "name": command["name"], "type": 1})
    if "guild_id" in command:
        invocation.data["guild_id"] = command["guild_id"]
    schema: list[Json] = command["options"]
    container = invocation.data
    for word in words[1:]:
        option = _schema_option(schema, word, path)
        if OptionType(option["type"]) not in _SUBCOMMANDS:
            raise EmulatorError(f"{word!r} in {path!r} is not a subcommand")
        nested: Json = {"name": word, "type": option["type"], "options": []}
        container.setdefault("options", []).append(nested)
        container, schema = nested, option.get("options") or []
    if any(OptionType(o["type"]) in _SUBCOMMANDS for o in schema):
        raise EmulatorError(f"{path!r} needs a subcommand")
    typed = _typed_options(world, invocation, schema, values, guild, channel)
    container["options"] = typed
    if invocation.resolved:
        invocation.data["resolved"] = invocation.resolved
    return invocation


def _schema_option(schema: list[Json], name: str, path: str) -> Json:
    for option in schema:
        if option["name"] == name:
            return option
    raise EmulatorError(f"{path!r}: the schema has no option {name!r}")


def _typed_options(
    world: World,
    invocation: Invocation,
    schema: list[Json],
    values: Mapping[str, Any],
    guild: Guild | None,
    channel: Channel,
) -> list[Json]:
    known = {option["name"]: option for option in schema}
    unknown = set(values) - set(known)
    if unknown:
        raise EmulatorError(f"unknown options {sorted(unknown)}; the schema has {sorted(known)}")
    typed = []
    for name, option in known.items():
        if name not in values:
            if option.get("required"):
                raise EmulatorError(f"option {name!r} is required")
            continue
        kind = OptionType(option["type"])
        value = _typed_value(world, invocation, kind, values[name], guild, channel)
        _check_constraints(option, value)
        typed.append({"name": name, "type": int(kind), "value": value})
    return typed


def _typed_value(
    world: World,
    invocation: Invocation,
    kind: OptionType,
    value: Any,
    guild: Guild | None,
    channel: Channel,
) -> Any:
    if kind is OptionType.STRING:
        return str(value)
    if kind is OptionType.INTEGER:
        if isinstance(value, bool) or int(value) != value:
            raise EmulatorError(f"{value!r} is not an integer")
        return int(value)
    if kind is OptionType.BOOLEAN:
        return bool(value)
    if kind is OptionType.NUMBER:
        return float(value)
    if kind is OptionType.ATTACHMENT:
        return _resolve_attachment(world, invocation, value, channel)
    return _resolve_entity(world, invocation, kind, value, guild)


def _resolve_entity(
    world: World, invocation: Invocation, kind: OptionType, value: Any, guild: Guild | None
) -> str:
    resolved = invocation.resolved
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = _lookup(world, value, guild)
    if isinstance(value, User) and kind in (OptionType.USER, OptionType.MENTIONABLE):
        resolved.setdefault("users", {})[str(value.id)] = value.payload()
        member = guild.members.get(value.id) if guild else None
        if guild is not None and member is not None:
            payload = member.payload(with_user=False, permissions=guild.permissions_of(value.id))
            resolved.setdefault("members", {})[str(value.id)] = payload
        return str(value.id)
    if isinstance(value, Role) and kind in (OptionType.ROLE, OptionType.MENTIONABLE):
        resolved.setdefault("roles", {})[str(value.id)] = value.payload()
        return str(value.id)
    if isinstance(value, Channel) and kind is OptionType.CHANNEL:
        payload = value.payload()
        payload["permissions"] = str(guild.permissions_of(world.bot.id) if guild else 0)
        resolved.setdefault("channels", {})[str(value.id)] = payload
        return str(value.id)
    raise EmulatorError(f"{value!r} is not a valid {kind.name} option value")


def _lookup(world: World, snowflake: int, guild: Guild | None) -> Any:
    """The user, role or channel a bare id names (the control API passes ids)."""
    roles = {role.id: role for role in guild.roles} if guild else {}
    found: Any = world.users.get(snowflake) or roles.get(snowflake) or world.channels.get(snowflake)
    return snowflake if found is None else found


def _resolve_attachment(world: World, invocation: Invocation, value: Any, channel: Channel) -> str:
    if not isinstance(value, Upload):
        raise EmulatorError("an ATTACHMENT option takes an Upload(filename, data)")
    attachment = world.store_upload(channel.id, value, ephemeral=True)
    invocation.resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
    return str(attachment.id)


def _check_constraints(option: Json, value: Any) -> None:
    choices = option.get("choices")
    if choices and value not in [choice["value"] for choice in choices]:
        allowed = [choice["value"] for choice in choices]
        raise EmulatorError(f"{value!r} is not one of the choices {allowed} of {option['name']!r}")
    low, high = option.get("min_value"), option.get("max_value")
    if (low is not None and value < low) or (high is not None and value > high):
        raise EmulatorError(f"{value!r} is outside [{low}, {high}] for {option['name']!r}")
    if isinstance(value, str) and option["type"] == OptionType.STRING:
        shortest, longest = option.get("min_length") or 0, option.get("max_length") or 6000
        if not shortest <= len(value) <= longest:
            raise EmulatorError(f"{option['name']!r} must be {shortest}..{longest} characters")
