"""``imagine generate``: the whole service path without Discord, with progress."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from backend.catalog import ModelCatalog, prompt_limits
from backend.errors import BackendError, BadInputError
from backend.events.base import EventKind, JobEvent
from backend.models import SCHEDULER_NAMES, SEED_MAX, JobSpec
from backend.prompt import parse_prompt
from cli.common import EXIT_OK, checked_user_id, settings_for
from config.settings import Settings

if TYPE_CHECKING:
    from types import TracebackType

    from structlog.typing import FilteringBoundLogger as BoundLogger

    from cli.common import Commands

# The prompt language in brief, for ``imagine generate --help`` (the README has it whole).
PROMPT_FLAGS: tuple[tuple[str, str], ...] = (
    ("--ar W:H", "aspect ratio, e.g. 16:9 (at most prompt.max_aspect)"),
    ("--seed N", f"0 to {SEED_MAX}; random when absent"),
    ("--no a, b", "negative prompt, up to the next flag"),
    ("--steps N", "denoising steps, 1 to prompt.max_steps (default: the model's)"),
    ("--cfg X, --guidance X", "classifier-free guidance, 0 to prompt.max_guidance"),
    ("--fast, --relax, --turbo", "the lane asked for (the user's tier decides)"),
    ("--model NAME", "a model declared in the settings"),
    ("--n N", "samples, 1 to prompt.max_n; 4 makes the 2x2 grid"),
    ("--scheduler NAME", ", ".join(SCHEDULER_NAMES)),
)
_HELP_COLUMNS = 79


def _prompt_help() -> str:
    width = max(len(flag) for flag, _ in PROMPT_FLAGS) + 4
    lines = ["prompt flags (anywhere in the prompt; an em dash works as --):"]
    for flag, meaning in PROMPT_FLAGS:
        wrapped = textwrap.wrap(meaning, _HELP_COLUMNS - width)
        lines.append(f"  {flag:<{width - 2}}{wrapped[0]}")
        lines.extend(" " * width + more for more in wrapped[1:])
    return "\n".join(lines)


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
        "generate",
        parents=[common],
        help="generate an image grid from a prompt, no Discord",
        epilog=_prompt_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument(
        "prompt", help='prompt with flags (listed below), e.g. "a lighthouse --ar 16:9"'
    )
    generate.add_argument("-o", "--output", type=Path, help="also write the grid PNG here")
    generate.add_argument(
        "--user-id", type=int, default=0, help="user to account the job to (0 to 2**63-1)"
    )
    generate.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    checked_user_id(args.user_id, "--user-id")
    output = checked_output(args.output) if args.output is not None else None
    path = asyncio.run(generate_to_file(settings, args.prompt, output, user_id=args.user_id))
    print(path)
    return EXIT_OK


class OutputWriteError(BackendError):
    """The finished grid could not be written to ``-o``; it stays in the data directory
    and the job is not marked delivered."""

    def __init__(self, target: Path, grid: Path, reason: str) -> None:
        self.target = target
        self.grid = grid
        self.reason = reason
        super().__init__(
            f"could not write {target} ({reason}); the grid is stored at {grid} "
            "and the job is not marked delivered"
        )


def checked_output(path: Path) -> Path:
    """Refuse an output path we could not write, before any work is done.

    Writability is proved by creating (and removing) a file beside the target, where
    the copy's temporary file will go: permission bits say nothing for root, nor on a
    read-only mount."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BadInputError(f"output {path} is a directory; give a file name such as grid.png")
    if path.suffix.lower() != ".png":
        raise BadInputError(f"output {path} must end in .png")
    if parent.exists() and not parent.is_dir():
        raise BadInputError(f"output directory {parent} is not a directory")
    if not parent.is_dir():
        raise BadInputError(f"output directory {parent} does not exist")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as exc:
        raise BadInputError(
            f"output directory {parent} is not writable ({exc.strerror or exc})"
        ) from exc
    os.close(handle)
    os.unlink(probe)
    return path


async def generate_to_file(
    settings: Settings, text: str, output: Path | None, *, user_id: int = 0
) -> Path:
    """Parse, queue, run and store one job; returns the grid's path (``output`` if given)."""
    # The service and its stores load only when a job runs (see _log).
    from backend.app import open_backend
    from cli.signals import saving_on_signals

    spec = parse_prompt(text, prompt_limits(settings))
    catalog = ModelCatalog(settings)
    catalog.get(spec.model)  # refuse an unknown model before storing anything
    async with saving_on_signals(open_backend(settings)) as backend:
        _note_unknown_words(catalog, spec)  # once the job can run: one line on bad input
        service = backend.service
        job_id = service.new_job_id()
        subscription = service.follow(job_id)
        await service.submit(spec, user_id=user_id, job_id=job_id)
        _log().info("generate_submitted", job_id=job_id, seed=spec.seed)
        with ProgressView(sys.stderr) as progress:
            async for event in subscription:
                progress.show(event)
                if event.kind.is_final:
                    result = service.result_of(event)
        grid = Path(result.grid_path)
        if output is not None:
            await asyncio.to_thread(_deliver, grid, output)
        # Only once the grid is where the user asked for it.
        await backend.db.jobs.mark_delivered(job_id)
    return output if output is not None else grid


def _note_unknown_words(catalog: ModelCatalog, spec: JobSpec) -> None:
    unknown = catalog.unknown_words(spec)
    if unknown:
        name = spec.model or catalog.default
        print(
            f"imagine: note: model {name!r} never saw the words {', '.join(unknown)}; "
            "it draws whatever it makes of them",
            file=sys.stderr,
        )


def _deliver(grid: Path, output: Path) -> None:
    try:
        copy_atomic(grid, output)
    except OSError as exc:
        raise OutputWriteError(output, grid, exc.strerror or str(exc)) from exc


def copy_atomic(source: Path, target: Path) -> None:
    """Copy so that ``target`` is either absent or complete, never half-written, with
    the mode a new file gets under the umask (mkstemp's own is 0600)."""
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out, source.open("rb") as src:
            os.fchmod(out.fileno(), 0o666 & ~current_umask())
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def current_umask() -> int:
    """The process's umask; read from /proc where Linux offers it, since asking
    ``os.umask`` means setting it, for a moment, for every thread."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class ProgressView:
    """A progress bar with steps and ETA on a terminal; one log line per stage otherwise.

    Used as a context manager, the bar's line is ended before any log line is written,
    so a record never lands in the middle of it."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self._stream = stream
        from config.logging import is_terminal

        self._tty = is_terminal(stream)
        self._width = width
        self._started = time.monotonic()
        self._drawn = False
        self._total = 0
        # Log records arrive from any thread (the device's too).
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressView:
        from config.logging import set_status_line

        if self._tty:
            set_status_line(self.close)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        from config.logging import set_status_line

        if self._tty:
            set_status_line(None)
        self.close()

    def show(self, event: JobEvent) -> None:
        """Redraw the bar for a step (on a terminal); log a stage change as one line.
        A job that succeeded gets its bar drawn full first: the last step's progress
        is not always published before the result."""
        if event.kind in (EventKind.STARTED, EventKind.STEP) and event.total:
            self._total = event.total
        if event.kind is EventKind.STEP:
            if self._tty:
                self._draw(event)
            return
        if event.kind is EventKind.SUCCEEDED and self._tty and self._total:
            self._draw(JobEvent(event.job_id, EventKind.STEP, self._total, self._total, 0.0))
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
        with self._lock:
            self._stream.write(f"\r[{bar}] {event.step}/{event.total} steps {eta}  ")
            self._stream.flush()
            self._drawn = True

    def close(self) -> None:
        """End the bar's line, so whatever is written next starts on its own."""
        with self._lock:
            if self._drawn:
                self._stream.write("\n")
                self._stream.flush()
                self._drawn = False
