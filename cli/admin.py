"""Administration commands: ``migrate``, ``model build-tiny|build-random|train-shapes``,
``degrade``
and ``config show``.

Two registration functions keep ``imagine --help`` listing the commands in their
order: setting up an installation (migrate, model) before the benchmarks, operating
one (degrade, config) after them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

from backend.errors import BadInputError
from cli import shapes
from cli.common import EXIT_OK, at_least, checked_user_id, settings_for

if TYPE_CHECKING:
    from cli.common import Commands


def register_setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``imagine migrate`` and ``imagine model build-tiny|build-random|train-shapes``."""
    migrate = commands.add_parser("migrate", parents=[common], help="apply database migrations")
    migrate.set_defaults(func=_cmd_migrate)

    model = commands.add_parser("model", parents=[common], help="manage models")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    build_tiny = model_commands.add_parser(
        "build-tiny", parents=[common], help="build the tiny offline test model into DIR"
    )
    build_tiny.add_argument("dir", type=Path)
    build_tiny.set_defaults(func=_cmd_build_tiny)
    _add_build_random(model_commands, common)
    shapes.add_parser(model_commands, common)


def register_operations(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``imagine degrade`` and ``imagine config show``."""
    degrade = commands.add_parser(
        "degrade",
        parents=[common],
        help="show the degradation level, or pin it (an admin override) and clear the pin",
    )
    degrade.add_argument(
        "action", choices=("show", "set", "clear"), nargs="?", default="show", help="default: show"
    )
    degrade.add_argument("level", nargs="?", help="for set: normal, light, medium or heavy")
    degrade.add_argument("--actor", type=int, default=0, help="admin id recorded with the change")
    degrade.set_defaults(func=_cmd_degrade)

    config = commands.add_parser("config", parents=[common], help="inspect settings")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", parents=[common], help="print the effective settings, secrets masked"
    )
    show.set_defaults(func=_cmd_config_show)


def _cmd_config_show(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    print(json.dumps(settings.masked(), indent=2))
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    from storage.db import Database
    from storage.migrate import current_version

    async def run() -> None:
        async with Database.open(settings.database_path) as db:
            version = await current_version(db.connection)
        print(f"{settings.database_path}: schema version {version}")

    asyncio.run(run())
    return EXIT_OK


def _new_dir(target: Path) -> Path:
    """``target`` if a model can be built there: it does not exist, its parent does."""
    if target.exists():
        raise BadInputError(f"{target} already exists; choose a new directory")
    if not target.parent.is_dir():
        raise BadInputError(f"{target.parent} is not a directory")
    return target


def _cmd_build_tiny(args: argparse.Namespace) -> int:
    settings_for(args)
    target = _new_dir(args.dir)
    from backend.engine.tiny import build_tiny_pipeline

    print(build_tiny_pipeline(target))
    return EXIT_OK


def _add_build_random(model_commands: Commands, common: argparse.ArgumentParser) -> None:
    build_random = model_commands.add_parser(
        "build-random",
        parents=[common],
        help="build a pipeline of a real model family with random weights into DIR",
    )
    build_random.add_argument("--family", required=True, choices=("sd15", "sdxl"))
    build_random.add_argument(
        "--size",
        choices=("tiny", "full"),
        default="tiny",
        help="tiny: small channels, seconds on a CPU; full: the real configuration in fp16 "
        "(SD1.5 about 2 GB, SDXL about 7 GB). Default: tiny",
    )
    build_random.add_argument("--seed", type=at_least(0), default=0, help="default: 0")
    build_random.add_argument("dir", type=Path)
    build_random.set_defaults(func=_cmd_build_random)


def _cmd_build_random(args: argparse.Namespace) -> int:
    settings_for(args)
    target = _new_dir(args.dir)
    from backend.engine.random_models import ModelSize, build_random_pipeline
    from config.settings import ModelFamily

    family, size = ModelFamily(args.family), ModelSize(args.size)
    print(build_random_pipeline(target, family, size, seed=args.seed))
    return EXIT_OK


def _cmd_degrade(args: argparse.Namespace) -> int:
    """The level in force and the override; ``set``/``clear`` persist the override (in
    SQLite, and in Redis for every host in Redis mode; an embedded service reads
    SQLite at its next start)."""
    settings = settings_for(args)
    checked_user_id(args.actor, "--actor")
    from backend.app import load_degrade, shared_redis
    from backend.degrade.ladder import Level
    from storage.db import Database

    level = None
    if args.action == "set":
        try:
            level = Level(str(args.level))
        except ValueError:
            names = ", ".join(level.value for level in Level)
            raise BadInputError(f"degrade set needs a level: {names}") from None
    elif args.level is not None:
        raise BadInputError(f"degrade {args.action} takes no level")

    async def run() -> None:
        async with (
            shared_redis(settings) as redis_client,
            Database.open(settings.database_path) as db,
        ):
            controller = await load_degrade(settings, db, redis_client)
            if level is not None:
                await controller.set_override(level, args.actor)
            elif args.action == "clear":
                await controller.clear_override(args.actor)
            override = controller.override
            pinned = f"override {override.level.value}" if override else "no override"
            print(f"level {controller.level.value} ({pinned})")

    asyncio.run(run())
    return EXIT_OK
