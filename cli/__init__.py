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
from backend.models import SCHEDULER_NAMES
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

    bench = commands.add_parser("bench", parents=[common], help="measure and print figures")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    engine = bench_commands.add_parser(
        "engine", parents=[common], help="throughput by batch size, overhead, preemption"
    )
    engine.add_argument("--model", help="model name (default: the default model)")
    engine.add_argument("--width", type=_positive_multiple_of_8, default=64)
    engine.add_argument("--height", type=_positive_multiple_of_8, default=64)
    engine.add_argument("--steps", type=_positive_int, default=4)
    engine.add_argument("--scheduler", default="euler", choices=SCHEDULER_NAMES)
    engine.add_argument(
        "--batches", type=_batch_list, default=(1, 2, 4, 8, 16), help="e.g. 1,2,4,8,16"
    )
    engine.add_argument("--repeats", type=_positive_int, default=5)
    engine.add_argument("--json", action="store_true", help="end with one JSON line")
    engine.set_defaults(func=_cmd_bench_engine)

    from backend.bench import queue as queue_bench
    from backend.bench import scheduler as scheduler_bench

    scheduler = bench_commands.add_parser(
        "scheduler",
        parents=[common],
        help="replay a trace through scheduling policies on a simulated device",
    )
    scheduler_bench.add_arguments(scheduler)
    scheduler.set_defaults(func=_cmd_bench_scheduler)
    queue = bench_commands.add_parser(
        "queue", parents=[common], help="queue operations per second, memory and Redis"
    )
    queue_bench.add_arguments(queue)
    queue.set_defaults(func=_cmd_bench_queue)

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
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_multiple_of_8(text: str) -> int:
    value = _positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{value} must be a multiple of 8")
    return value


def _batch_list(text: str) -> tuple[int, ...]:
    sizes = tuple(_positive_int(part) for part in text.split(",") if part.strip())
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one batch size")
    return tuple(sorted(set(sizes)))


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


def _cmd_degrade(args: argparse.Namespace) -> int:
    """The level in force and the override; ``set``/``clear`` persist the override (in
    SQLite, and in Redis for every host in Redis mode; an embedded service reads
    SQLite at its next start)."""
    settings = _settings(args)
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


def _cmd_bench_engine(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from backend.bench.engine import EngineBenchConfig, run_engine_bench
    from backend.catalog import ModelCatalog

    ModelCatalog(settings).get(args.model)  # unknown model: exit 2 before loading torch work
    config = EngineBenchConfig(
        model=args.model,
        width=args.width,
        height=args.height,
        steps=args.steps,
        scheduler=args.scheduler,
        batches=args.batches,
        repeats=args.repeats,
    )
    result = run_engine_bench(settings, config, say=lambda line: print(line, flush=True))
    pre = result["preemption"]
    print(
        f"best batch {result['best_batch']} ({result['speedup_best_vs_1']}x batch 1), "
        f"95% of peak at batch {result['batch_95']}, "
        f"overhead vs stock {result['overhead_vs_stock']:+.1%} (median over batch sizes)"
    )
    print(
        f"preemption: p50 {pre['latency_s_p50'] * 1000:.1f} ms, max "
        f"{pre['latency_steps_max']:.2f} steps; state "
        f"{pre['state_bytes_per_sample'] / 1024:.1f} KiB/sample here, SD1.5 512px: "
        + ", ".join(f"{k} {v} KiB" for k, v in result["state_kib_per_sample_sd15_512"].items())
    )
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return EXIT_OK


def _cmd_bench_scheduler(args: argparse.Namespace) -> int:
    from backend.bench import scheduler as scheduler_bench

    return scheduler_bench.main(_settings(args), args)


def _cmd_bench_queue(args: argparse.Namespace) -> int:
    from backend.bench import queue as queue_bench

    return queue_bench.main(args)


def _cmd_generate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cli.generate import generate_to_file

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
