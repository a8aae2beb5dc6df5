"""`imagine bot` as a server owner starts it: a separate process, black box, pointed at the
Discord emulator by its one environment variable."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from bot.endpoints import EMULATOR_ENV
from tests.discord_emulator.server import DiscordEmulator

pytestmark = pytest.mark.slow

STOP_BOUND_S = 20.0


def _env(emu: DiscordEmulator, data_dir: Path, token: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        EMULATOR_ENV: emu.url,
        "IMAGINE_DATA_DIR": str(data_dir),
        "IMAGINE_DISCORD__GUILD_IDS": f"[{emu.guild.id}]",
        "IMAGINE_ENGINE__DEVICE": "cpu",
        "IMAGINE_ENGINE__TORCH_THREADS": "1",
        "IMAGINE_BOT__EDIT_INTERVAL_S": "0.3",
        "IMAGINE_LOG__FORMAT": "json",
    }
    env.pop("IMAGINE_DISCORD__TOKEN", None)
    if token is not None:
        env["IMAGINE_DISCORD__TOKEN"] = token
    return env


@contextmanager
def _bot_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "bot"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@asynccontextmanager
async def _serving(
    emu: DiscordEmulator, env: dict[str, str], log: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A bot process, once its commands are synced and it is on the gateway; SIGTERM and
    exit 0 on the way out (unless the test already stopped it)."""
    synced = len(emu.requests_to("PUT /applications/{app}/guilds/{guild}/commands"))
    identified = emu.gateway_stats.identifies
    with _bot_process(env, log) as process:
        deadline = time.monotonic() + 90
        while (
            len(emu.requests_to("PUT /applications/{app}/guilds/{guild}/commands")) <= synced
            or emu.gateway_stats.identifies <= identified
        ):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the bot never synced and connected"
            await asyncio.sleep(0.2)
        yield process
        if process.poll() is not None:
            return  # the test stopped it its own way
        process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(process.wait, STOP_BOUND_S)
        assert status == 0, log.read_text()[-3000:]


async def _imagine(emu: DiscordEmulator, prompt: str) -> tuple[str, int]:
    ix = await emu.slash(emu.users["alice"], emu.channel, "imagine", {"prompt": prompt})
    await ix.wait_response(timeout_s=10)
    progress = ix.original()
    assert progress is not None
    return progress.custom_ids()[0].rsplit(":", 1)[1], progress.id


async def _grid(emu: DiscordEmulator, job_id: str) -> int:
    message = await emu.wait_for_message(
        lambda m: bool(m.attachments) and f"im:r:0:{job_id}" in m.custom_ids(), timeout_s=60
    )
    return message.id


def test_a_missing_token_is_one_line_and_status_2(tmp_path: Path) -> None:
    """Without discord.token the bot says how to set it, in one line, and exits 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
    env["IMAGINE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "cli", "bot"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "IMAGINE_DISCORD__TOKEN" in result.stderr


async def test_a_token_discord_rejects_is_one_line_and_status_2(
    discord_emulator: DiscordEmulator, tmp_path: Path
) -> None:
    """A token Discord answers 401 to: one line naming the setting, status 2, no secret."""
    env = _env(discord_emulator, tmp_path / "data", "not-the-token")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "bot",
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _out, err = await asyncio.wait_for(process.communicate(), 90)
    text = err.decode()
    lines = [line for line in text.splitlines() if line.startswith("imagine:")]
    assert process.returncode == 2, text[-2000:]
    assert len(lines) == 1 and "rejected discord.token" in lines[0]
    assert "not-the-token" not in text


async def test_the_bot_process_serves_stops_on_sigterm_and_resumes_after_a_restart(
    discord_emulator: DiscordEmulator, tmp_path: Path
) -> None:
    """`imagine bot` delivers a job; SIGTERM in the middle of a second job stops it with
    status 0; a new process on the same data directory resumes that job from its
    checkpoint and delivers it to its message, and a button of the first result still
    works."""
    emu = discord_emulator
    env = _env(emu, tmp_path / "data", emu.token)
    async with _serving(emu, env, tmp_path / "first.log"):
        first, _ = await _imagine(emu, "a red circle on a white background")
        old_grid = await _grid(emu, first)
        running, running_message = await _imagine(
            emu, "a blue square on a yellow background --steps 150"
        )
        await emu.wait_for_message(
            lambda m: m.id == running_message and re.search(r"\([1-9][0-9]?%", m.content),
            timeout_s=60,
        )
    async with _serving(emu, env, tmp_path / "second.log"):
        assert await _grid(emu, running) == running_message
        claims = [
            json.loads(line)
            for line in (tmp_path / "second.log").read_text().splitlines()
            if line.startswith("{") and '"job_claimed"' in line
        ]
        assert any(c["job_id"] == running and c["resumed"] for c in claims), claims
        old = next(m for m in emu.messages if m.id == old_grid)
        click = await emu.click(emu.users["alice"], old, f"im:v:1:{first}")
        await click.wait_response(timeout_s=10)
        vary = click.original()
        assert vary is not None and "Variation of" in vary.content
        await _grid(emu, vary.custom_ids()[0].rsplit(":", 1)[1])


async def test_a_bot_killed_mid_job_delivers_the_job_after_the_next_start(
    discord_emulator: DiscordEmulator, tmp_path: Path
) -> None:
    """kill -9 in the middle of a job: the next process on the same data directory runs
    the job again and delivers it to the progress message the first one posted."""
    emu = discord_emulator
    env = _env(emu, tmp_path / "data", emu.token)
    async with _serving(emu, env, tmp_path / "first.log") as first:
        job, message = await _imagine(emu, "a green circle on a black background --steps 150")
        await emu.wait_for_message(
            lambda m: m.id == message and re.search(r"\([1-9][0-9]?%", m.content),
            timeout_s=60,
        )
        first.kill()
        assert await asyncio.to_thread(first.wait, STOP_BOUND_S) == -signal.SIGKILL
    async with _serving(emu, env, tmp_path / "second.log"):
        assert await _grid(emu, job) == message
