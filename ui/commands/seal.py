"""`atelier seal` (placeholder until its issue lands; replace this whole module)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("seal", help="(not built yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise SystemExit("atelier seal: not built yet")
