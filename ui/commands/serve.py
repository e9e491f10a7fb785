"""`atelier serve`: the OpenAI-compatible HTTP API (Open WebUI, LibreChat, any OpenAI client)."""

from __future__ import annotations

import os

from ui.cli import add_profile_args, load_profile_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve the OpenAI-compatible API (/v1/chat/completions, /v1/models, /v1/files)",
        description="Serve Atelier as an OpenAI-compatible model for Open WebUI, LibreChat or any OpenAI client.",
    )
    add_profile_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-keys", metavar="FILE", default=os.environ.get("ATELIER_API_KEYS_FILE"),
        help="YAML file mapping API keys to user ids (sk-...: alice); also $ATELIER_API_KEYS='key=user,...'. "
        "With no keys the server is for local use (user 'local').",
    )
    p.add_argument("--allow-remote-images", action="store_true",
                   help="fetch http(s) image URLs in messages (off: only data: URLs are accepted); only "
                   "public addresses are fetched")
    p.add_argument("--remote-image-network", metavar="CIDR", action="append", default=[],
                   help="with --allow-remote-images, also fetch from this non-public network (e.g. an "
                   "intranet image host, 10.1.2.0/24); repeatable")
    p.add_argument("--public-url", default=None,
                   help="base URL for image links in answers, when clients reach the server through a proxy")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args) -> int:
    from agent import Atelier
    from ui.http_api import ServerOptions, load_api_keys, serve

    profile = load_profile_from_args(args)
    keys = load_api_keys(args.api_keys, os.environ.get("ATELIER_API_KEYS"))
    if not keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"atelier serve: warning: no API keys configured and listening on {args.host}; "
              "anyone who can reach it can use it (see --api-keys)")
    options = ServerOptions(api_keys=keys, allow_remote_images=args.allow_remote_images, public_url=args.public_url,
                            remote_image_allowed_networks=args.remote_image_network)
    serve(Atelier(profile=profile), options, host=args.host, port=args.port, log_level=args.log_level)
    return 0
