"""The ``imagine`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from backend.errors import BackendError, BadInputError
from config.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imagine`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except (SettingsError, BadInputError) as exc:
        print(f"imagine: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BackendError as exc:
        print(f"imagine: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("imagine: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML settings file (default: $IMAGINE_CONFIG)",
    )
    parser = argparse.ArgumentParser(
        prog="imagine", description="Self-hosted image generation for Discord.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", parents=[common], help="generate an image grid from a prompt, no Discord"
    )
    generate.add_argument("prompt", help='prompt with flags, e.g. "a lighthouse --ar 16:9"')
    generate.add_argument("-o", "--output", type=Path, help="also write the grid PNG here")
    generate.add_argument("--user-id", type=int, default=0, help="user to account the job to")
    generate.set_defaults(func=_cmd_generate)

    migrate = commands.add_parser("migrate", parents=[common], help="apply database migrations")
    migrate.set_defaults(func=_cmd_migrate)

    model = commands.add_parser("model", parents=[common], help="manage models")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    build_tiny = model_commands.add_parser(
        "build-tiny", parents=[common], help="build the tiny offline test model into DIR"
    )
    build_tiny.add_argument("dir", type=Path)
    build_tiny.set_defaults(func=_cmd_build_tiny)

    config = commands.add_parser("config", parents=[common], help="inspect settings")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", parents=[common], help="print the effective settings, secrets masked"
    )
    show.set_defaults(func=_cmd_config_show)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from config.logging import configure_logging, register_secret

    settings = load_settings(getattr(args, "config", None))
    if settings.discord.token is not None:
        register_secret(settings.discord.token.get_secret_value())
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.masked(), indent=2))
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from storage.db import Database
    from storage.migrate import current_version

    async def run() -> None:
        async with Database.open(settings.database_path) as db:
            version = await current_version(db.connection)
        print(f"{settings.database_path}: schema version {version}")

    asyncio.run(run())
    return EXIT_OK


def _cmd_build_tiny(args: argparse.Namespace) -> int:
    _settings(args)
    target: Path = args.dir
    if target.exists():
        raise BadInputError(f"{target} already exists; choose a new directory")
    if not target.parent.is_dir():
        raise BadInputError(f"{target.parent} is not a directory")
    from backend.engine.tiny import build_tiny_pipeline

    print(build_tiny_pipeline(target))
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from backend.generate import generate_to_file

    output = _checked_output(args.output) if args.output is not None else None
    path = asyncio.run(generate_to_file(settings, args.prompt, output, user_id=args.user_id))
    print(path)
    return EXIT_OK


def _checked_output(path: Path) -> Path:
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


if __name__ == "__main__":
    sys.exit(main())
