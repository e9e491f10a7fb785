"""`atelier mcp`: Atelier's tools as an MCP server (Claude Desktop, LibreChat, any MCP client)."""

from __future__ import annotations

import os
import sys

from ui.cli import add_profile_args, load_profile_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "mcp", help="serve Atelier's tools over MCP (stdio or streamable HTTP)",
        description="Expose generate_image, edit_image, relight_image, reframe_image, adjust_image, revert, "
        "verify and upload_image to an MCP client. stdio for Claude Desktop; http for LibreChat and remote clients.",
    )
    add_profile_args(p)
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio (default; the client starts the server) or streamable HTTP at /mcp")
    p.add_argument("--host", default="127.0.0.1", help="HTTP interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="HTTP port (default 8001)")
    p.add_argument("--user", default="local",
                   help="user id of the client when there are no API keys (default local: the same person as the "
                   "local chat and CLI, so their refs work here)")
    p.add_argument(
        "--api-keys", metavar="FILE", default=os.environ.get("ATELIER_API_KEYS_FILE"),
        help="HTTP only: YAML file mapping bearer keys to user ids (as for atelier serve; also "
        "$ATELIER_API_KEYS='key=user,...'). Each key is its own user; without keys HTTP stays on loopback.")
    p.add_argument("--thread", default=None,
                   help="the thread of every call that names none in _meta \"atelier/thread\" (default: a new "
                   "thread per 2025-11-25 HTTP session, else one per user while the server runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from ui.mcp_server import build_server  # first: it checks the SDK before anything heavy loads
    except ImportError as err:
        if not str(err).startswith("atelier mcp needs"):
            raise
        print(err, file=sys.stderr)  # an mcp 1.x (Chainlit's pin) in this environment
        return 2
    from agent import Atelier

    if args.transport == "stdio":
        from ui.mcp_server import protect_stdout

        protect_stdout()  # before anything can print: stdout carries only MCP messages
    profile = load_profile_from_args(args)
    settings: dict = {"log_level": "WARNING"}
    keys: dict[str, str] = {}
    if args.transport == "http":
        from ui.http_api import load_api_keys

        settings.update(host=args.host, port=args.port)
        keys = load_api_keys(args.api_keys, os.environ.get("ATELIER_API_KEYS"))
        if not keys and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"atelier mcp: without API keys the HTTP server stays on loopback; {args.host} needs --api-keys",
                  file=sys.stderr)
            return 2
    server = build_server(Atelier(profile=profile), user_id=args.user, thread_id=args.thread, api_keys=keys,
                          **settings)
    server.run(args.transport)
    return 0
