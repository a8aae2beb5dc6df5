"""A burst of /imagine jobs from many users in one channel, through the real bot, the
Discord emulator and the shipped shapes model; what it measured.

Used by the end-to-end test (which checks every job arrived, each user got their own
picture and no message was edited faster than the throttle allows) and as a command
that prints the figures:

    python -m tests.bot.burst [--jobs 50] [--users 20] [--edit-interval 3.0]

Figures: REST calls per job (median, maximum, and the bound duration / interval + a
constant), the time from the slash command to its acknowledgement and to the first
progress edit (median, p95), and the wall time of the burst.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from backend.shapes.score import score
from backend.shapes.vocab import HELD_OUT, Color, Shape, combinations
from backend.stats import percentile
from config.settings import Settings
from tests.bot.conftest import bot_settings, job_of, running_bot
from tests.discord_emulator.control import load_world
from tests.discord_emulator.messages import Message
from tests.discord_emulator.models import User
from tests.discord_emulator.server import DiscordEmulator

# The README's bound on REST calls per job beyond duration / interval: the first
# progress edit, the interaction callback, the final edit, and when the token expired
# the channel post and the progress message's pointer instead of the final edit.
REST_CALLS_CONSTANT = 4
SAMPLE_PX = 32


@dataclass(frozen=True, slots=True)
class Ask:
    """One user's prompt and what it should draw."""

    color: Color
    shape: Shape
    background: Color

    @property
    def prompt(self) -> str:
        """The prompt text."""
        return f"a {self.color.value} {self.shape.value} on a {self.background.value} background"


@dataclass
class JobRecord:
    """One job of the burst as the emulator saw it."""

    user: User
    ask: Ask
    sent_s: float
    job_id: str = ""
    ack_s: float | None = None
    first_edit_s: float | None = None
    done_s: float | None = None
    rest_calls: int = 0
    message: Message | None = None


@dataclass
class BurstReport:
    """What a burst measured."""

    jobs: list[JobRecord] = field(default_factory=list)
    wall_s: float = 0.0
    edit_interval_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        """The figures, rounded, as one JSON-able object."""
        calls = [job.rest_calls for job in self.jobs]
        acks = [job.ack_s - job.sent_s for job in self.jobs if job.ack_s is not None]
        edits = [job.first_edit_s - job.sent_s for job in self.jobs if job.first_edit_s is not None]
        return {
            "jobs": len(self.jobs),
            "wall_s": round(self.wall_s, 2),
            "edit_interval_s": self.edit_interval_s,
            "rest_calls_median": statistics.median(calls),
            "rest_calls_max": max(calls),
            "rest_calls_bound_max": max(self.bound(job) for job in self.jobs),
            "ack_ms_median": round(1000 * statistics.median(acks), 1),
            "ack_ms_p95": round(1000 * percentile(acks, 95), 1),
            "first_edit_ms_median": round(1000 * statistics.median(edits), 1) if edits else None,
            "first_edit_ms_p95": round(1000 * percentile(edits, 95), 1) if edits else None,
        }

    def bound(self, job: JobRecord) -> int:
        """The most REST calls the job may make: its duration over the edit interval,
        plus :data:`REST_CALLS_CONSTANT`."""
        assert job.done_s is not None
        return math.ceil((job.done_s - job.sent_s) / self.edit_interval_s) + REST_CALLS_CONSTANT


def asks(users: int) -> list[Ask]:
    """One trained combination per user, each with its own colour and background pair."""
    trained = set(combinations()) - HELD_OUT
    pairs = sorted({(color, background) for color, _shape, background in trained})
    # Spread over colours and backgrounds, the shape turning with each user.
    step = max(1, len(pairs) // users)
    chosen = []
    for number in range(users):
        color, background = pairs[(number * step) % len(pairs)]
        shapes = [s for s in Shape if (color, s, background) in trained]
        chosen.append(Ask(color, shapes[number % len(shapes)], background))
    return chosen


def add_users(emu: DiscordEmulator, count: int) -> list[User]:
    """``count`` members of the emulator's guild (the fixture's alice and bob first)."""
    users = [emu.users["alice"], emu.users["bob"]]
    for number in range(len(users), count):
        user = emu.add_user(f"user{number}")
        emu.guild.add_member(user)
        users.append(user)
    return users[:count]


async def run_burst(
    emu: DiscordEmulator, settings: Settings, users: list[User], jobs: int, timeout_s: float
) -> BurstReport:
    """Send ``jobs`` /imagine commands round-robin from ``users`` at once; wait for every
    result."""
    wishes = asks(len(users))
    report = BurstReport(edit_interval_s=settings.bot.edit_interval_s)
    async with running_bot(emu, settings) as run:
        started = time.monotonic()
        pending = []
        for number in range(jobs):
            user, ask = users[number % len(users)], wishes[number % len(users)]
            record = JobRecord(user, ask, time.monotonic())
            seed = f" --seed {number}"
            pending.append(
                (
                    record,
                    await emu.slash(user, emu.channel, "imagine", {"prompt": ask.prompt + seed}),
                )
            )
            report.jobs.append(record)
        for record, ix in pending:
            await ix.wait_response(timeout_s=10)
            message = ix.original()
            assert message is not None, f"no progress message for {record.user.name}"
            record.job_id = job_of(message)
            record.message = message
        for record, _ix in pending:
            remaining_s = max(1.0, timeout_s - (time.monotonic() - started))
            record.message = await run.final_message(record.job_id, timeout_s=remaining_s)
        report.wall_s = time.monotonic() - started
    _measure(emu, report)
    return report


def _measure(emu: DiscordEmulator, report: BurstReport) -> None:
    by_token = {}
    for record in report.jobs:
        assert record.message is not None
        token = record.message.interaction_token
        by_token[token] = record
        times = [at for at, _payload in record.message.edits]
        record.ack_s = times[0]
        record.first_edit_s = times[1] if len(times) > 2 else None
        record.done_s = times[-1]
    for request in emu.requests:
        for token, record in by_token.items():
            if token and token in request.path:
                record.rest_calls += 1


def edit_gaps(message: Message) -> list[float]:
    """Seconds between consecutive progress edits of a message (creation and the final
    edit left out: the final is not held by the interval)."""
    times = [at for at, _payload in message.edits[1:-1]]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def readings(message: Message) -> list[tuple[Color, Color | None, Shape | None]]:
    """What the scorer reads in each tile of a message's 2x2 grid."""
    grid = Image.open(io.BytesIO(message.attachments[0].data)).convert("RGB")
    half_w, half_h = grid.width // 2, grid.height // 2
    found = []
    for row in range(2):
        for col in range(2):
            tile = grid.crop((col * half_w, row * half_h, (col + 1) * half_w, (row + 1) * half_h))
            sample = tile.resize((SAMPLE_PX, SAMPLE_PX), Image.Resampling.BOX)
            scored = score(sample)
            found.append((scored.background, scored.color, scored.shape))
    return found


async def _main(jobs: int, users: int, interval_s: float, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data:
        os.environ["IMAGINE_DATA_DIR"] = data
        os.environ.setdefault("IMAGINE_ENGINE__DEVICE", "cpu")
        os.environ.setdefault("IMAGINE_ENGINE__TORCH_THREADS", "1")
        emu = DiscordEmulator("bench-token")
        load_world(
            emu,
            {
                "users": ["admin", "alice", "bob"],
                "guilds": [
                    {
                        "name": "g",
                        "owner": "admin",
                        "channels": ["general"],
                        "members": ["alice", "bob"],
                    }
                ],
            },
        )
        await emu.start()
        try:
            with emu.patch_discord():
                settings = bot_settings(
                    emu, bot={"edit_interval_s": interval_s}, data_dir=Path(data)
                )
                report = await run_burst(emu, settings, add_users(emu, users), jobs, timeout_s)
        finally:
            await emu.close()
    return report.figures()


def main(argv: list[str] | None = None) -> int:
    """Run one burst and print its figures (a table, then one JSON line)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bot.burst", description=__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--edit-interval", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    figures = asyncio.run(_main(args.jobs, args.users, args.edit_interval, args.timeout))
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
