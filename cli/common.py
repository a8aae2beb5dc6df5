"""What every command group shares: exit statuses, the ``--config`` parent parser,
settings loading with logging set-up, argparse value types and the mapping from errors
to exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

from backend.errors import BackendError, BadInputError
from config.settings import Settings, SettingsError, load_settings
from storage.errors import UnusableStorageError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130
# The largest id a user or an actor may have: SQLite's INTEGER is a signed 64-bit
# number (every Discord id so far is far below it).
USER_ID_MAX = 2**63 - 1

if TYPE_CHECKING:
    # What ``add_subparsers`` returns; argparse's class is generic only to type checkers.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Command = Callable[[argparse.Namespace], int]
"""What a sub-command's ``func`` default holds: parsed arguments in, exit status out."""


def common_parser() -> argparse.ArgumentParser:
    """The parent parser of every command: ``--config``, accepted at any level."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML settings file (default: $IMAGINE_CONFIG)",
    )
    return common


def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` selected; bad input, bad settings and an unusable data
    directory exit 2 with one line, a backend failure exits 1, Ctrl-C exits 130, never
    with a traceback."""
    command: Command = args.func
    try:
        return command(args)
    except (SettingsError, BadInputError, UnusableStorageError) as exc:
        _say(f"imagine: error: {exc}")
        return EXIT_BAD_INPUT
    except BackendError as exc:
        _say(f"imagine: failed: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("imagine: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _say(line: str) -> None:
    """Print one line to stderr with every registered secret redacted."""
    from config.logging import redact_text

    print(redact_text(line), file=sys.stderr)


def read_settings(args: argparse.Namespace) -> Settings:
    """The settings of ``--config`` (or ``$IMAGINE_CONFIG``) and the environment, with
    nothing else set up (for commands that only read a value or two)."""
    return load_settings(getattr(args, "config", None))


def settings_for(args: argparse.Namespace) -> Settings:
    """:func:`read_settings`, then logging configured from them and the Discord token
    and the Redis password registered for redaction."""
    from config.logging import configure_logging, register_secret

    settings = read_settings(args)
    if settings.discord.token is not None:
        register_secret(settings.discord.token.get_secret_value())
    with contextlib.suppress(ValueError):  # a URL urllib cannot split has no password to find
        register_secret(urlsplit(settings.queue.redis_url.get_secret_value()).password)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def checked_user_id(value: int, flag: str) -> int:
    """``value`` if it can name a user (0 to :data:`USER_ID_MAX`); else BadInputError."""
    if not 0 <= value <= USER_ID_MAX:
        raise BadInputError(f"{flag} must be a whole number from 0 to {USER_ID_MAX}, not {value}")
    return value


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
        return value

    return parse


positive_int = at_least(1)
"""An argparse type: a whole number of at least 1."""


def positive_multiple_of_8(text: str) -> int:
    """An argparse type: a whole number of at least 1 divisible by 8 (image sides)."""
    value = positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{value} must be a multiple of 8")
    return value


def batch_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated batch sizes, deduplicated and sorted."""
    sizes = tuple(positive_int(part) for part in text.split(",") if part.strip())
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one batch size")
    return tuple(sorted(set(sizes)))
