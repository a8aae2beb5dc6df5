"""Faults, gateway drops, authentication, the control API and process mode."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import aiohttp
import discord
import pytest

from tests.discord_emulator.conftest import start_bot, stop_bot
from tests.discord_emulator.fixtures import DEFAULT_WORLD
from tests.discord_emulator.models import Auth
from tests.discord_emulator.sample_bot import SampleBot
from tests.discord_emulator.server import DiscordEmulator

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_ORIGINAL = "PATCH /webhooks/{app}/{token}/messages/@original"
CHANNEL_POST = "POST /channels/{channel}/messages"


async def ping_reply(emu: DiscordEmulator) -> str:
    ix = await (await emu.slash(emu.users["alice"], emu.channel, "ping")).wait_response()
    original = ix.original()
    assert original is not None
    return original.content


async def test_rate_limited_edit_is_retried(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """429s with Via on the @original edit make discord.py wait and retry until it lands."""
    emu = discord_emulator
    fault = emu.rate_limit("PATCH", r"/webhooks/.*", times=2, retry_after_s=0.05)
    await emu.slash(emu.users["alice"], emu.channel, "draft")
    await emu.wait_for_message(lambda m: m.content == "final")
    limited = emu.requests_to(WEBHOOK_ORIGINAL)
    assert [r.status for r in limited] == [429, 429, 200] and fault.remaining == 0
    assert limited[-1].time_s - limited[0].time_s >= 0.09


async def test_server_errors_are_retried(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """Two 500s on a channel post are retried with backoff and the third attempt lands."""
    emu = discord_emulator
    emu.fail("POST", r"/channels/\d+/messages", status=500, times=2)
    sent = await bot.get_channel(emu.channel.id).send("persistent")
    assert [r.status for r in emu.requests_to(CHANNEL_POST)] == [500, 500, 200]
    assert [m.id for m in emu.messages if m.content == "persistent"] == [sent.id]


async def test_rate_limit_without_via_is_not_retried(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """The 429 body and headers follow Discord: Via, retry_after, global, X-RateLimit-*."""
    emu = discord_emulator
    emu.rate_limit("GET", r"/users/@me", times=1, retry_after_s=0.25, global_=True)
    headers = {"Authorization": f"Bot {emu.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emu.url}/api/v10/users/@me", headers=headers) as limited,
    ):
        body = await limited.json(content_type=None)
    assert limited.status == 429 and limited.headers["Via"] == "1.1 google"
    assert body == {"message": "You are being rate limited.", "retry_after": 0.25, "global": True}
    assert limited.headers["X-RateLimit-Global"] == "true"
    assert limited.headers["X-RateLimit-Remaining"] == "0"


async def test_dropped_gateway_resumes(discord_emulator: DiscordEmulator, bot: SampleBot) -> None:
    """After a 4000 close discord.py RESUMEs the session and interactions keep arriving."""
    emu = discord_emulator
    await emu.drop_gateway()
    await asyncio.wait_for(bot.resumed.wait(), timeout=10)
    stats = emu.gateway_stats
    assert (stats.identifies, stats.resumes, stats.connections) == (1, 1, 2)
    assert await ping_reply(emu) == "pong"


async def test_events_during_an_outage_are_replayed(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """An interaction sent while the socket is cut (1006) is replayed after RESUME."""
    emu = discord_emulator
    await emu.drop_gateway(1006)
    reply = await ping_reply(emu)
    assert reply == "pong" and emu.gateway_stats.resumes == 1
    assert emu.gateway_stats.identifies == 1


async def test_bad_token_fails_login(discord_emulator: DiscordEmulator) -> None:
    """A wrong token gets 401 on GET /users/@me and bot.start raises LoginFailure."""
    client = SampleBot(discord_emulator.guild.id)
    try:
        with pytest.raises(discord.LoginFailure):
            await client.start("wrong-token")
    finally:
        await client.close()
    request = discord_emulator.requests[-1]
    assert (request.route, request.status, request.auth) == ("GET /users/@me", 401, Auth.INVALID)


async def test_gateway_rejects_bad_identify(discord_emulator: DiscordEmulator) -> None:
    """IDENTIFY with a wrong token is closed with 4004 (Authentication failed)."""
    url = discord_emulator.endpoints()["discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY"]
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        hello = await ws.receive_json(timeout=5)
        await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}})
        closing = await ws.receive(timeout=5)
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 41250
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4004


async def test_unknown_routes_are_404_and_recorded(discord_emulator: DiscordEmulator) -> None:
    """Unimplemented routes answer a JSON 404 and are recorded; known ones need the bot token."""
    emu = discord_emulator
    headers = {"Authorization": f"Bot {emu.token}"}
    async with aiohttp.ClientSession() as session:
        bans = f"{emu.url}/api/v10/guilds/{emu.guild.id}/bans"
        async with session.get(bans, headers=headers) as missing:
            body = await missing.json(content_type=None)
        async with session.get(f"{emu.url}/api/v10/users/@me") as anonymous:
            pass
    unknown, unauthorised = emu.requests
    assert (missing.status, body["code"], unknown.implemented) == (404, 0, False)
    assert missing.headers["Content-Type"] == "application/json"
    assert (anonymous.status, unauthorised.auth) == (401, Auth.NONE)


async def test_control_api_drives_the_bot(
    discord_emulator: DiscordEmulator, bot: SampleBot
) -> None:
    """A slash command posted through /_emulator/ reaches the bot; messages list attachment URLs."""
    emu = discord_emulator
    command = {
        "user_id": str(emu.users["alice"].id),
        "channel_id": str(emu.channel.id),
        "command": "imagine",
        "options": {"prompt": "a blue square", "steps": 2},
    }
    async with aiohttp.ClientSession(base_url=emu.url) as session:
        async with session.post("/_emulator/slash", json=command) as posted:
            ix_id = (await posted.json())["interaction_id"]
        await emu.wait_for_message(lambda m: m.content == "a blue square (2 steps)")
        async with session.get(f"/_emulator/interactions/{ix_id}") as answered:
            summary = await answered.json()
        async with session.get("/_emulator/messages") as listed:
            messages = await listed.json()
    url = messages[0]["attachments"][0]["url"]
    assert summary["response_type"] == 5 and summary["original"]["id"] == messages[0]["id"]
    assert url.startswith(f"{emu.url}/attachments/") and url.endswith("/out.png")


async def test_process_mode(tmp_path: Path) -> None:
    """The module prints its URL, serves the control API and exits 0 on SIGTERM."""
    world = tmp_path / "world.json"
    world.write_text(json.dumps(DEFAULT_WORLD))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.discord_emulator", "--port", "0", "--world", str(world),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        url = line.strip().removeprefix("emulator listening on ")
        async with aiohttp.ClientSession(base_url=url) as session:
            async with session.post("/_emulator/users", json={"name": "carol"}) as created:
                carol = await created.json()
            async with session.get("/_emulator/state") as state:
                world_state = await state.json()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert line.startswith("emulator listening on http://127.0.0.1:") and code == 0
    assert carol["name"] == "carol" and world_state["guilds"][0]["name"] == "test guild"
    assert {u["name"] for u in world_state["users"]} == {"admin", "alice", "bob", "carol"}


async def test_second_bot_can_log_in_after_close(discord_emulator: DiscordEmulator) -> None:
    """A fresh client identifies anew after the first one closed (a new session)."""
    for _ in range(2):
        client = SampleBot(discord_emulator.guild.id)
        task = await start_bot(client)
        await stop_bot(client, task)
    assert discord_emulator.gateway_stats.identifies == 2


async def test_rejected_identify_closes_the_client(discord_emulator: DiscordEmulator) -> None:
    """A token the gateway refuses (4004) ends bot.start with ConnectionClosed, not a retry loop."""
    discord_emulator.gateway.token = "rotated"
    client = SampleBot(discord_emulator.guild.id)
    try:
        with pytest.raises(discord.ConnectionClosed) as closed:
            await asyncio.wait_for(client.start(discord_emulator.token), timeout=10)
    finally:
        await client.close()
    assert closed.value.code == 4004 and discord_emulator.gateway_stats.close_codes == [4004]
