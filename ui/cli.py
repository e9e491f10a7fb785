"""`atelier`: one command-line tool with subcommands.

Each subcommand lives in `ui/commands/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func(args) -> int`. Heavy imports happen inside `func`, so `atelier --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tools.errors import AtelierError

COMMANDS = [
    "chat", "ui", "serve", "mcp", "ingest", "screen", "seal", "verify", "compare", "audit", "eval", "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier",
        description="Atelier: a chat image studio on the Qwen model family.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ui.commands.{name}").register(sub)
    return parser


def add_profile_args(parser: argparse.ArgumentParser) -> None:
    """--profile and --set, shared by every subcommand that builds a profile."""
    from agent.config import add_profile_arguments

    add_profile_arguments(parser)


def load_profile_from_args(args: argparse.Namespace):
    from agent.config import profile_from_arguments

    return profile_from_arguments(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except AtelierError as err:
        print(f"atelier {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
