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
    "chat", "ui", "serve", "mcp", "ingest", "screen", "seal", "verify", "audit", "eval", "bench",
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
    parser.add_argument("--profile", default=None, help="profile name or YAML path (default: $ATELIER_PROFILE or offline)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a profile field, e.g. --set engine.steps=4 (repeatable)",
    )


def load_profile_from_args(args: argparse.Namespace):
    from agent.config import load_profile, parse_overrides

    return load_profile(args.profile, parse_overrides(getattr(args, "overrides", [])))


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
