"""``imagine generate``: the whole service path without Discord, with progress."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from backend.catalog import ModelCatalog
from backend.errors import BadInputError
from backend.events.base import EventKind, JobEvent
from backend.prompt import PromptLimits, parse_prompt
from cli.common import EXIT_OK, settings_for
from config.settings import PromptSettings, Settings

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger as BoundLogger

    from cli.common import Commands


def _log() -> BoundLogger:
    """This module's logger. structlog (and the console renderer it pulls in) loads only
    when a job runs, so the other commands and ``bench queue``'s figures stay in a light
    process."""
    import structlog

    logger: BoundLogger = structlog.get_logger(__name__)
    return logger


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``imagine generate`` to the command line."""
    generate = commands.add_parser(
        "generate", parents=[common], help="generate an image grid from a prompt, no Discord"
    )
    generate.add_argument("prompt", help='prompt with flags, e.g. "a lighthouse --ar 16:9"')
    generate.add_argument("-o", "--output", type=Path, help="also write the grid PNG here")
    generate.add_argument("--user-id", type=int, default=0, help="user to account the job to")
    generate.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    output = checked_output(args.output) if args.output is not None else None
    path = asyncio.run(generate_to_file(settings, args.prompt, output, user_id=args.user_id))
    print(path)
    return EXIT_OK


def checked_output(path: Path) -> Path:
    """Refuse an output path we could not write, before any work is done."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BadInputError(f"output {path} is a directory; give a file name such as grid.png")
    if not parent.is_dir():
        raise BadInputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"output directory {parent} is not writable")
    if path.suffix.lower() != ".png":
        raise BadInputError(f"output {path} must end in .png")
    return path


def prompt_limits(settings: PromptSettings) -> PromptLimits:
    """The parser's limits as configured."""
    return PromptLimits(
        max_prompt_chars=settings.max_prompt_chars,
        pixel_budget=settings.pixel_budget,
        max_aspect=settings.max_aspect,
        max_steps=settings.max_steps,
        max_guidance=settings.max_guidance,
        default_n=settings.default_n,
        max_n=settings.max_n,
    )


async def generate_to_file(
    settings: Settings, text: str, output: Path | None, *, user_id: int = 0
) -> Path:
    """Parse, queue, run and store one job; returns the grid's path (``output`` if given)."""
    # The service and its stores load only when a job runs (see _log).
    from backend.app import open_backend

    spec = parse_prompt(text, prompt_limits(settings.prompt))
    ModelCatalog(settings).get(spec.model)  # refuse an unknown model before storing anything
    progress = ProgressView(sys.stderr)
    async with open_backend(settings) as backend:
        service = backend.service
        job_id = service.new_job_id()
        subscription = service.follow(job_id)
        await service.submit(spec, user_id=user_id, job_id=job_id)
        _log().info("generate_submitted", job_id=job_id, seed=spec.seed)
        try:
            async for event in subscription:
                progress.show(event)
                if event.kind.is_final:
                    result = service.result_of(event)
        finally:
            progress.close()
        await backend.db.jobs.mark_delivered(job_id)
    if output is None:
        return Path(result.grid_path)
    copy_atomic(Path(result.grid_path), output)
    return output


def copy_atomic(source: Path, target: Path) -> None:
    """Copy so that ``target`` is either absent or complete, never half-written."""
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class ProgressView:
    """A progress bar with steps and ETA on a terminal; one log line per stage otherwise."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        from config.logging import is_terminal

        self._tty = is_terminal(stream)
        self._width = width
        self._started = time.monotonic()
        self._drawn = False

    def show(self, event: JobEvent) -> None:
        """Redraw the bar for a step (on a terminal); log a stage change as one line."""
        if event.kind is EventKind.STEP:
            if self._tty:
                self._draw(event)
            return
        self.close()
        if event.kind is EventKind.FAILED:
            _log().error("job_failed", job_id=event.job_id, error=event.error)
        else:
            elapsed = round(time.monotonic() - self._started, 2)
            _log().info(f"job_{event.kind.value}", job_id=event.job_id, elapsed_s=elapsed)

    def _draw(self, event: JobEvent) -> None:
        total = max(event.total, 1)
        filled = int(self._width * event.step / total)
        bar = "#" * filled + "-" * (self._width - filled)
        eta = f"ETA {event.eta_s:4.1f}s" if event.eta_s is not None else ""
        self._stream.write(f"\r[{bar}] {event.step}/{event.total} steps {eta}  ")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line, so whatever is written next starts on its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
