"""`atelier ingest FILE...`: validate uploads and store them; one ref per file."""

from __future__ import annotations

import sys


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("ingest", help="validate images and put them in the image store")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--session", default="ingest", help="thread the images are listed in (default ingest)")
    p.add_argument("--user", default="local", help="whose images they are (default local, the local user)")
    add_profile_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from agent import Atelier
    from tools.errors import BadImageError, RefusedError
    from tools.store import resize_note
    from ui.cli import load_profile_from_args

    app = Atelier(profile=load_profile_from_args(args))
    session = app.session(args.session, user_id=args.user)  # the same upload path as the chat's
    failed = 0
    for path in args.files:
        try:
            version = session.upload(path)
        except (BadImageError, RefusedError) as err:
            print(f"rejected: {err}", file=sys.stderr)
            failed += 1
            continue
        print(version.ref)
        note = resize_note(version)
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 1 if failed else 0
