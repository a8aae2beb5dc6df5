"""The real discord.py client against the emulator: gateway, app commands, responses, messages."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import discord
import pytest

from tests.discord_emulator.models import EmulatorError, MessageFlag
from tests.discord_emulator.sample_bot import PNG, SampleBot
from tests.discord_emulator.server import DiscordEmulator

WEBHOOK_ORIGINAL = "PATCH /webhooks/{app}/{token}/messages/@original"


def png_file() -> io.BytesIO:
    return io.BytesIO(PNG)


async def imagine(emu: DiscordEmulator, prompt: str = "a red circle"):
    ix = await emu.slash(emu.users["alice"], emu.channel, "imagine", prompt=prompt)
    await ix.wait_response()
    message = await emu.wait_for_message(lambda m: m is ix.original() and not m.loading)
    return ix, message


async def test_ready_caches_the_guild(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """READY then GUILD_CREATE leave the guild, its channel and the bot's member cached."""
    emu = discord_emulator
    guild = bot.get_guild(emu.guild.id)
    await emu.wait_until(lambda: emu.gateway_stats.heartbeats_acked >= 1)
    assert guild is not None and [c.name for c in guild.channels] == ["general"]
    assert guild.me is not None and guild.me.id == emu.bot.id
    assert bot.application_id == emu.application_id == bot.user.id
    assert emu.gateway_stats.identifies == 1 and emu.gateway_stats.connections == 1


async def test_sync_stores_guild_commands(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A guild tree sync is stored with ids, and a second sync keeps those ids."""
    stored = discord_emulator.commands(discord_emulator.guild)
    names = {command["name"] for command in stored}
    again = await bot.tree.sync(guild=discord.Object(discord_emulator.guild.id))
    admin = next(command for command in stored if command["name"] == "admin")
    assert names == {"ping", "imagine", "secret", "draft", "form", "later", "admin"}
    assert {str(c.id) for c in again} == {c["id"] for c in stored}
    assert [o["name"] for o in admin["options"]] == ["degrade", "tier"]
    assert admin["default_member_permissions"] == str(1 << 5)
    assert discord_emulator.commands() == []


async def test_slash_command_answered_with_message(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A type-4 callback creates the original response, authored by the bot."""
    emu = discord_emulator
    ix = await emu.slash(emu.users["alice"], emu.channel, "ping")
    await ix.wait_response()
    original = ix.original()
    assert ix.response_type == 4 and original is not None
    assert original.content == "pong" and original.author_id == emu.bot.id
    assert original.interaction_token == ix.token and original.type == 20


async def test_subcommand_group_with_choice(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A subcommand inside a group reaches its handler with the chosen value."""
    emu = discord_emulator
    ix = await emu.slash(emu.users["admin"], emu.channel, "admin degrade set", level="heavy")
    await ix.wait_response()
    assert ix.original() is not None and ix.original().content == "degrade heavy"


async def test_user_option_resolves_member(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A USER option arrives as a Member built from data.resolved."""
    emu = discord_emulator
    bob = emu.users["bob"]
    ix = await emu.slash(emu.users["admin"], emu.channel, "admin tier set", user=bob, tier="pro")
    await ix.wait_response()
    resolved = ix.payload["data"]["resolved"]
    assert ix.original().content == f"Member {bob.id} bob pro"
    assert set(resolved["users"]) == set(resolved["members"]) == {str(bob.id)}


async def test_client_rules_are_enforced(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """Users cannot run commands their permissions hide, nor pick values outside the choices."""
    emu = discord_emulator
    with pytest.raises(EmulatorError, match="lacks the permissions"):
        await emu.slash(emu.users["alice"], emu.channel, "admin degrade set", level="heavy")
    with pytest.raises(EmulatorError, match="choices"):
        await emu.slash(emu.users["admin"], emu.channel, "admin degrade set", level="max")
    with pytest.raises(EmulatorError, match="required"):
        await emu.slash(emu.users["alice"], emu.channel, "imagine")


async def test_deferral_replaced_by_followup_with_png(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """After a defer (5) the first follow-up replaces the thinking message; the CDN has the PNG."""
    emu = discord_emulator
    ix, message = await imagine(emu)
    attachment = message.attachments[0]
    async with aiohttp.ClientSession() as session, session.get(attachment.url) as response:
        served = await response.read()
    fetched = await bot.get_channel(emu.channel.id).fetch_message(message.id)
    assert ix.response_type == 5 and ix.followups == []
    assert message.edits[0][1]["flags"] & MessageFlag.LOADING and not message.loading
    assert message.content == "a red circle (4 steps)"
    assert attachment.url.startswith(f"{emu.url}/attachments/{emu.channel.id}/")
    assert (attachment.filename, attachment.content_type) == ("out.png", "image/png")
    assert (attachment.width, attachment.height) == (3, 2)
    assert served == PNG and await fetched.attachments[0].read() == PNG


async def test_edit_original_response(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """edit_original_response PATCHes @original; the message records both versions."""
    emu = discord_emulator
    ix = await emu.slash(emu.users["alice"], emu.channel, "draft")
    message = await emu.wait_for_message(lambda m: m.content == "final")
    assert message is ix.original()
    assert [payload["content"] for _, payload in message.edits] == ["draft", "final"]
    assert [r.status for r in emu.requests_to(WEBHOOK_ORIGINAL)] == [200]


async def test_ephemeral_response(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """An ephemeral response is visible to its user only and absent from channel history."""
    emu = discord_emulator
    alice = emu.users["alice"]
    ix = await (await emu.slash(alice, emu.channel, "secret")).wait_response()
    history = [m.id async for m in bot.get_channel(emu.channel.id).history()]
    original = ix.original()
    assert ix.ephemeral and original.ephemeral_to == alice.id
    assert original.flags & MessageFlag.EPHEMERAL and original.id not in history


async def test_button_click_answered_by_update(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A persistent DynamicItem click (type 3) answered by edit_message updates the message (7)."""
    emu = discord_emulator
    _, message = await imagine(emu)
    click = await (await emu.click(emu.users["bob"], message, "counter:0")).wait_response()
    assert click.response_type == 7 and click.original() is message
    assert message.content == "count 1" and "counter:1" in message.custom_ids()
    assert click.payload["data"]["component_type"] == 2


async def test_button_deferred_update_then_edit(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A deferred update (6) then @original edits the clicked message."""
    emu = discord_emulator
    _, message = await imagine(emu)
    click = await emu.click(emu.users["alice"], message, "progress:j1")
    edited = await emu.wait_for_message(lambda m: m.content == "job j1 running")
    assert click.response_type == 6 and edited is message and click.original() is message


async def test_modal_then_submit(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """A modal (9) with a row and a label is answered by a submit (5) that fills both fields."""
    emu = discord_emulator
    alice = emu.users["alice"]
    shown = await (await emu.slash(alice, emu.channel, "form")).wait_response()
    answers = {"prompt": "a cat", "style": ["sketch"]}
    submit = await (await emu.submit_modal(alice, emu.channel, "form", answers)).wait_response()
    assert shown.response_type == 9 and shown.modal["title"] == "Describe"
    assert submit.response_type == 4 and submit.original().content == "got a cat as ['sketch']"
    with pytest.raises(EmulatorError, match="no open modal"):
        await emu.submit_modal(alice, emu.channel, "form", {"prompt": "again"})


async def test_channel_message_lifecycle(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """Send with an attachment, edit (kept), edit dropping it, delete: as Discord does."""
    emu = discord_emulator
    channel = bot.get_channel(emu.channel.id)
    sent = await channel.send("hello", file=discord.File(png_file(), "a.png"))
    stored = emu.world.messages_by_id[sent.id]
    await sent.edit(content="hello again")
    kept = [a.filename for a in stored.attachments]
    await sent.edit(attachments=[])
    dropped = list(stored.attachments)
    await sent.delete()
    with pytest.raises(discord.NotFound) as missing:
        await channel.fetch_message(sent.id)
    assert kept == ["a.png"] and dropped == [] and stored.deleted
    assert stored.content == "hello again" and missing.value.code == 10008


async def test_edit_keeps_listed_attachments(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """An edit keeps the attachments it lists plus its new files, and nothing else."""
    channel = bot.get_channel(discord_emulator.channel.id)
    files = [discord.File(png_file(), "one.png"), discord.File(png_file(), "two.png")]
    sent = await channel.send(files=files)
    edited = await sent.edit(attachments=[sent.attachments[1], discord.File(png_file(), "new.png")])
    assert [a.filename for a in edited.attachments] == ["two.png", "new.png"]
    assert edited.attachments[0].id == sent.attachments[1].id


async def test_dm_to_closed_user_is_forbidden(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """Sending to a user whose DMs are closed raises Forbidden with code 50007."""
    emu = discord_emulator
    bob = emu.users["bob"]
    user = await bot.fetch_user(bob.id)
    await user.send("open")
    emu.close_dms(bob)
    with pytest.raises(discord.Forbidden) as refused:
        await user.send("closed")
    assert refused.value.code == 50007
    assert [m.content for m in emu.messages if m.channel_id == emu.dm_channel(bob).id] == ["open"]


async def test_unknown_objects(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """Unknown member, message and channel answer 10007, 10008 and 10003."""
    guild = bot.get_guild(discord_emulator.guild.id)
    channel = bot.get_channel(discord_emulator.channel.id)
    with pytest.raises(discord.NotFound) as member:
        await guild.fetch_member(42)
    with pytest.raises(discord.NotFound) as message:
        await channel.fetch_message(42)
    with pytest.raises(discord.NotFound) as unknown_channel:
        await bot.fetch_channel(42)
    codes = (member.value.code, message.value.code, unknown_channel.value.code)
    assert codes == (10007, 10008, 10003)
    assert (await guild.fetch_member(discord_emulator.users["bob"].id)).name == "bob"


async def test_expired_token_rejects_followup(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A follow-up with a token past its 15 minutes raises HTTPException 50027."""
    emu = discord_emulator
    await (await emu.slash(emu.users["alice"], emu.channel, "later")).wait_response()
    emu.expire_interaction_tokens()
    bot.release.set()
    error = await asyncio.wait_for(bot.errors.get(), timeout=5)
    assert isinstance(error, discord.HTTPException)
    assert (error.status, error.code) == (401, 50027)


async def test_late_callback_is_unknown_interaction(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A callback after the window raises NotFound 10062 and the interaction stays unanswered."""
    emu = discord_emulator
    emu.callback_window_s = 0.0
    ix = await emu.slash(emu.users["alice"], emu.channel, "ping")
    error = await asyncio.wait_for(bot.errors.get(), timeout=5)
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert ix.rejected == [10062] and not ix.responded


async def test_second_callback_already_acknowledged(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A second callback for one interaction answers 400 with code 40060."""
    emu = discord_emulator
    ix = await (await emu.slash(emu.users["alice"], emu.channel, "ping")).wait_response()
    url = f"{emu.url}/api/v10/interactions/{ix.id}/{ix.token}/callback"
    payload = {"type": 4, "data": {"content": "again"}}
    async with aiohttp.ClientSession() as session, session.post(url, json=payload) as response:
        body = await response.json(content_type=None)
        content_type = response.headers["Content-Type"]
    assert (response.status, body["code"]) == (400, 40060)
    assert content_type == "application/json"


async def test_global_command_in_dm(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """A global command runs in the bot's DM (user, not member); closed DMs do not block replies."""
    emu = discord_emulator
    alice = emu.users["alice"]
    await bot.tree.sync()
    emu.close_dms(alice)
    dm = emu.dm_channel(alice)
    ix = await (await emu.slash(alice, dm, "hello")).wait_response()
    assert ix.original().content == "hello alice in DM" and ix.original().channel_id == dm.id
    assert "user" in ix.payload and "member" not in ix.payload and ix.payload["context"] == 1
    assert [c["name"] for c in emu.commands()] == ["hello"]
    with pytest.raises(EmulatorError, match="no synced command /ping"):
        await emu.slash(alice, dm, "ping")


async def test_gateway_messages_skip_ephemeral(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """Interaction responses reach the bot as MESSAGE_CREATE, ephemeral ones do not."""
    emu = discord_emulator
    pong = asyncio.create_task(bot.wait_for("message", check=lambda m: m.content == "pong"))
    await (await emu.slash(emu.users["alice"], emu.channel, "secret")).wait_response()
    await emu.slash(emu.users["alice"], emu.channel, "ping")
    await asyncio.wait_for(pong, timeout=5)
    assert "pong" in bot.seen and "only you" not in bot.seen


async def test_world_changes_reach_the_bot(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A guild or channel added while connected arrives as GUILD_CREATE / CHANNEL_CREATE."""
    emu = discord_emulator
    joined = asyncio.create_task(bot.wait_for("guild_join"))
    created = asyncio.create_task(bot.wait_for("guild_channel_create"))
    guild = emu.add_guild("second guild", owner=emu.users["bob"])
    guild.add_channel("images")
    new_guild = await asyncio.wait_for(joined, timeout=5)
    channel = await asyncio.wait_for(created, timeout=5)
    assert new_guild.id == guild.id and new_guild.me is not None
    assert (channel.name, channel.guild.id) == ("images", guild.id)
