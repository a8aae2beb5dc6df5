"""``imagine bot``: the Discord front end, with the embedded service by default.

With the memory queue it runs the whole service in this process (SQLite, the local
device, the built-in model unless another is configured); with ``queue.backend =
"redis"`` it shares the queue and runs no device unless ``bot.local_worker`` says so.

A missing token, or one Discord rejects, is one line and exit status 2. The first
SIGTERM or Ctrl-C stops it cleanly: the client closes (results already finished are
still sent), running jobs are checkpointed and requeued for the next start, exit 0. A
second signal quits at once (status 130 or 143); the next start resumes every job from
its last checkpoint and delivers what is pending.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

import structlog

from backend.errors import BadInputError
from cli.common import EXIT_OK, settings_for

if TYPE_CHECKING:
    from backend.app import Backend
    from bot.client import ImagineBot
    from cli.common import Commands
    from config.settings import Settings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``imagine bot``."""
    bot = commands.add_parser(
        "bot",
        parents=[common],
        help="run the Discord bot (needs discord.token)",
        description=(
            "Run the Discord bot. Set the token with IMAGINE_DISCORD__TOKEN (or [discord] "
            "token); list guild ids in discord.guild_ids for instant command sync."
        ),
    )
    bot.set_defaults(func=_cmd_bot)


def _cmd_bot(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    token = settings.require_discord_token()
    from bot.endpoints import point_from_environment

    try:
        url = point_from_environment()
    except ValueError as exc:
        raise BadInputError(str(exc)) from exc
    if url is not None:
        structlog.get_logger(__name__).warning("discord_emulator_in_use", url=url)
    return asyncio.run(run_bot(settings, token))


async def run_bot(settings: Settings, token: str) -> int:
    """Run until a stop signal (exit 0) or a fatal Discord error."""
    from backend.app import open_backend

    local = settings.bot.local_worker
    if local is None:
        local = settings.queue.backend.value == "memory"
    stop = asyncio.Event()
    _install_signals(stop)
    try:
        async with open_backend(settings, local_worker=local) as backend:
            bot = _build_bot(settings, backend)
            try:
                await _serve(bot, token, stop)
            finally:
                # Running jobs are checkpointed and requeued rather than drained, also
                # when Discord refused us: a bot's stop takes seconds, and the next
                # start resumes them.
                backend.interrupt()
    finally:
        _restore_signals()
    return EXIT_OK


def _build_bot(settings: Settings, backend: Backend) -> ImagineBot:
    from backend.community import Community
    from backend.operations import Operations
    from bot.assemble import build_bot
    from bot.client import BotDeps

    community = Community(backend.db, settings.scheduler)
    operations = Operations(backend.parts())
    return build_bot(BotDeps(settings, backend.service, community, operations))


async def _serve(bot: ImagineBot, token: str, stop: asyncio.Event) -> None:
    import discord

    log = structlog.get_logger(__name__)
    async with bot:
        try:
            await bot.login(token)
        except discord.LoginFailure as exc:
            raise BadInputError(
                "Discord rejected discord.token (IMAGINE_DISCORD__TOKEN); copy the bot "
                "token again from the Developer Portal"
            ) from exc
        running = asyncio.create_task(bot.connect(reconnect=True), name="discord-client")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if running in done:
            stopping.cancel()
            _raise_fatal(running)
            return
        log.info("bot_stopping")
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running


def _raise_fatal(client: asyncio.Task[None]) -> None:
    """End the command with one line when the client stopped for good by itself."""
    import discord

    from backend.errors import BackendError

    try:
        client.result()
    except discord.PrivilegedIntentsRequired as exc:
        raise BadInputError(
            "Discord refused a privileged intent; the bot needs none, so check the "
            "application in the Developer Portal"
        ) from exc
    except discord.ConnectionClosed as exc:
        if exc.code == 4004:
            raise BadInputError(
                "Discord rejected discord.token (IMAGINE_DISCORD__TOKEN) on the gateway"
            ) from exc
        raise BackendError(f"the Discord gateway closed the connection ({exc.code})") from exc
    except discord.DiscordException as exc:
        raise BackendError(f"Discord client stopped: {exc}") from exc


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def first(signum: int) -> None:
        if stop.is_set():
            # A second signal: leave at once; the next start resumes and delivers.
            print("imagine: quitting now; jobs resume on the next start", file=sys.stderr)
            os._exit(128 + signum)
        print("imagine: stopping; running jobs are saved for the next start", file=sys.stderr)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, first, signum)


def _restore_signals() -> None:
    with contextlib.suppress(RuntimeError):
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
