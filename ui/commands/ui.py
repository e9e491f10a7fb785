"""`atelier ui`: start the Chainlit chat app (the README's first command ends here)."""

from __future__ import annotations


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("ui", help="start the chat app in the browser (Chainlit)")
    add_profile_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.set_defaults(func=run)


def run(args) -> int:
    from agent.config import parse_overrides
    from ui.chat_app import launch
    from ui.cli import load_profile_from_args

    profile = load_profile_from_args(args)  # fail fast on a bad profile, before the server starts
    print(f"Atelier chat on http://{args.host}:{args.port}  (profile: {profile.name})", flush=True)
    launch(args.profile or profile.name, parse_overrides(args.overrides), profile.store.root, args.host, args.port)
    return 0
