"""`atelier ingest FILE...`: validate uploads and store them; one ref per file."""

from __future__ import annotations

import sys


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("ingest", help="validate images and put them in the image store")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--session", default=None, help="session (thread) the images belong to")
    add_profile_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from agent.studio import open_store
    from tools.errors import BadImageError
    from ui.cli import load_profile_from_args

    store = open_store(load_profile_from_args(args))
    failed = 0
    for path in args.files:
        try:
            version = store.ingest(path, session=args.session)
        except BadImageError as err:
            print(f"rejected: {err}", file=sys.stderr)
            failed += 1
            continue
        print(version.ref)
    return 1 if failed else 0
