"""The gateway websocket: HELLO, IDENTIFY, READY, heartbeats, sequence numbers and RESUME."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from aiohttp import WSMsgType, web

from tests.discord_emulator.models import (
    EmulatorError,
    GatewayStats,
    Intent,
    Json,
    Notifier,
)
from tests.discord_emulator.world import World


class Op(IntEnum):
    """Gateway opcodes."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class CloseCode(IntEnum):
    """Gateway close codes the emulator sends."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005


class Connection:
    """One websocket; frames go out in order through a writer task (zlib-stream if asked)."""

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, *, compress: bool
    ) -> None:
        self.ws = ws
        self.transport = transport
        self._zlib = zlib.compressobj() if compress else None
        self._queue: asyncio.Queue[Json | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())
        self.identified = False

    def send(self, frame: Json) -> None:
        """Queue a frame."""
        self._queue.put_nowait(frame)

    async def _write(self) -> None:
        while (frame := await self._queue.get()) is not None:
            text = json.dumps(frame)
            try:
                if self._zlib is None:
                    await self.ws.send_str(text)
                else:
                    data = self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                return

    async def close(self, code: int) -> None:
        """Send pending frames, then close with `code`."""
        self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer, timeout=1.0)
        await self.ws.close(code=code)

    async def abort(self) -> None:
        """Stop writing; the socket is gone."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


@dataclass(eq=False)
class Session:
    """A gateway session: its sequence, every dispatch (for RESUME) and its live connection."""

    id: str
    intents: int
    shard: list[int] | None = None
    seq: int = 0
    history: list[Json] = field(default_factory=list)
    connection: Connection | None = None

    def dispatch(self, event: str, data: Json) -> None:
        """Number a dispatch, remember it and send it if connected."""
        self.seq += 1
        frame = {"op": Op.DISPATCH, "t": event, "s": self.seq, "d": data}
        self.history.append(frame)
        if self.connection is not None:
            self.connection.send(frame)


class Gateway:
    """Serves /gateway and routes the world's events to the bot's session."""

    def __init__(
        self, world: World, token: str, notifier: Notifier, heartbeat_interval_ms: int
    ) -> None:
        self.world = world
        self.token = token
        self.notifier = notifier
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.url = "ws://127.0.0.1:0/gateway"
        self.stats = GatewayStats()
        self.sessions: dict[str, Session] = {}
        self.session: Session | None = None
        self.connections: set[Connection] = set()

    # ------------------------------------------------------------------ events out

    def dispatch(self, event: str, data: Json, intent: int) -> None:
        """Send an event to the bot's session when its intents ask for it."""
        session = self.session
        if session is None or (intent and not session.intents & intent):
            return
        if event == "GUILD_CREATE":
            # A guild joined after READY was never announced unavailable: Discord omits the
            # key, and discord.py tells on_guild_join from on_guild_available by it.
            data = self._guild_create(session, int(data["id"]))
            del data["unavailable"]
        session.dispatch(event, data)
        self.stats.dispatches += 1

    def deliver_interaction(self, payload: Json) -> None:
        """INTERACTION_CREATE needs no intent; without any session there is no bot to tell."""
        if self.session is None:
            raise EmulatorError("no bot has identified on the gateway yet")
        self.session.dispatch("INTERACTION_CREATE", payload)
        self.stats.dispatches += 1

    def _guild_create(self, session: Session, guild_id: int) -> Json:
        everyone = bool(session.intents & Intent.GUILD_PRESENCES)
        return self.world.guilds[guild_id].create_payload(self.world.bot.id, all_members=everyone)

    async def drop(self, code: int = CloseCode.UNKNOWN_ERROR) -> None:
        """Close the bot's live connection; code 1006 cuts the TCP connection instead."""
        session = self.session
        connection = session.connection if session else None
        if session is None or connection is None:
            raise EmulatorError("the bot has no live gateway connection")
        session.connection = None
        self.stats.drops += 1
        self.stats.close_codes.append(code)
        if code == 1006:
            await connection.abort()
            if isinstance(connection.transport, asyncio.WriteTransport):
                connection.transport.abort()
        else:
            await connection.close(code)
        self.notifier.notify()

    async def close(self) -> None:
        """Close every connection (going away)."""
        for connection in list(self.connections):
            with contextlib.suppress(Exception):
                await connection.close(1001)

    # ------------------------------------------------------------------ frames in

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The websocket endpoint discord.py connects to (also READY's resume_gateway_url)."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        compress = request.query.get("compress") == "zlib-stream"
        connection = Connection(ws, request.transport, compress=compress)
        self.connections.add(connection)
        self.stats.connections += 1
        self.notifier.notify()
        connection.send({"op": Op.HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    await self._close(connection, CloseCode.DECODE_ERROR)
                    break
                await self._on_frame(connection, frame)
        finally:
            self.connections.discard(connection)
            for session in self.sessions.values():
                if session.connection is connection:
                    session.connection = None
            await connection.abort()
            self.notifier.notify()
        return ws

    async def _on_frame(self, connection: Connection, frame: Json) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == Op.HEARTBEAT:
            connection.send({"op": Op.HEARTBEAT_ACK})
            self.stats.heartbeats_acked += 1
            self.notifier.notify()
        elif op in (Op.IDENTIFY, Op.RESUME) and connection.identified:
            await self._close(connection, CloseCode.ALREADY_AUTHENTICATED)
        elif op == Op.IDENTIFY:
            await self._identify(connection, data or {})
        elif op == Op.RESUME:
            await self._resume(connection, data or {})
        elif not connection.identified:
            await self._close(connection, CloseCode.NOT_AUTHENTICATED)
        elif op == Op.REQUEST_GUILD_MEMBERS:
            self._members_chunk(data or {})
        elif op not in (Op.PRESENCE_UPDATE, Op.VOICE_STATE_UPDATE):
            await self._close(connection, CloseCode.UNKNOWN_OPCODE)

    async def _close(self, connection: Connection, code: int) -> None:
        self.stats.close_codes.append(code)
        self.notifier.notify()
        await connection.close(code)

    async def _identify(self, connection: Connection, data: Json) -> None:
        if data.get("token") != self.token:
            await self._close(connection, CloseCode.AUTHENTICATION_FAILED)
            return
        session = Session(secrets.token_hex(16), int(data.get("intents") or 0), data.get("shard"))
        self.sessions[session.id] = session
        self.session = session
        session.connection = connection
        connection.identified = True
        self.stats.identifies += 1
        session.dispatch("READY", self._ready(session))
        for guild_id in self.world.guilds:
            session.dispatch("GUILD_CREATE", self._guild_create(session, guild_id))
        self.notifier.notify()

    def _ready(self, session: Session) -> Json:
        world = self.world
        user = world.bot.payload() | {"verified": True, "mfa_enabled": False, "flags": 0}
        ready: Json = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(gid), "unavailable": True} for gid in world.guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.url,
            "application": {"id": str(world.application_id), "flags": world.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "user_settings": {},
            "auth": {},
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        return ready

    async def _resume(self, connection: Connection, data: Json) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if data.get("token") != self.token:
            await self._close(connection, CloseCode.AUTHENTICATION_FAILED)
            return
        if session is None:
            self.stats.invalid_sessions += 1
            connection.send({"op": Op.INVALID_SESSION, "d": False})
            self.notifier.notify()
            return
        since = int(data.get("seq") or 0)
        for frame in session.history:
            if frame["s"] > since:
                connection.send(frame)
        session.connection = connection
        connection.identified = True
        self.session = session
        self.stats.resumes += 1
        session.dispatch("RESUMED", {})
        self.notifier.notify()

    def _members_chunk(self, data: Json) -> None:
        session = self.session
        guild = self.world.guilds.get(int(data.get("guild_id") or 0))
        if session is None or guild is None:
            return
        wanted = {int(user_id) for user_id in data.get("user_ids") or []}
        members = [m for m in guild.members.values() if not wanted or m.user.id in wanted]
        chunk = {
            "guild_id": str(guild.id),
            "members": [member.payload() for member in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            "nonce": data.get("nonce"),
        }
        session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
