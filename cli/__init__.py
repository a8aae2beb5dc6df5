"""The ``imagine`` command line: the composition root.

Each command group registers its own sub-commands (:mod:`cli.generate`,
:mod:`cli.admin`, :mod:`cli.bench`); this module only assembles them and runs the
chosen one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cli import admin, bench, bot, generate
from cli.common import common_parser, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imagine`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: ``--config`` and every group's sub-commands."""
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="imagine", description="Self-hosted image generation for Discord.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Registration order is the order `imagine --help` lists the commands in.
    generate.register(commands, common)
    bot.register(commands, common)
    admin.register_setup(commands, common)
    bench.register(commands, common)
    admin.register_operations(commands, common)
    return parser
