"""Process mode: ``python -m tests.discord_emulator --port 0 [--token T] [--world FILE.json]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from tests.discord_emulator.control import load_world
from tests.discord_emulator.server import DiscordEmulator


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.discord_emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default="test-token", help="the bot token it accepts")
    parser.add_argument("--world", type=Path, help="a JSON world file (see load_world)")
    parser.add_argument("--callback-window-s", type=float, default=3.0)
    parser.add_argument("--interaction-token-ttl-s", type=float, default=900.0)
    return parser.parse_args(argv)


async def serve(arguments: argparse.Namespace) -> None:
    """Start, print the URL, run until SIGTERM or SIGINT, close."""
    emulator = DiscordEmulator(
        arguments.token,
        callback_window_s=arguments.callback_window_s,
        interaction_token_ttl_s=arguments.interaction_token_ttl_s,
    )
    if arguments.world is not None:
        load_world(emulator, json.loads(arguments.world.read_text()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await emulator.start(arguments.host, arguments.port)
    try:
        print(f"emulator listening on {emulator.url}", flush=True)
        await stop.wait()
    finally:
        await emulator.close()


def main(argv: list[str] | None = None) -> int:
    """Run the emulator as a process; exit status 0 after a signal."""
    asyncio.run(serve(_arguments(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
