"""`atelier eval planner|screen|watermark`: evaluations that print figures."""

from __future__ import annotations

import importlib

# sub-command -> module exposing register(subparsers) and run(args)
EVALS = {
    "planner": "agent.evals",
    "screen": "agent.screen_evals",
    "watermark": "tools.provenance.evals",
}


def register(sub) -> None:
    p = sub.add_parser("eval", help="run an evaluation (planner, screen, watermark) and print figures")
    evals = p.add_subparsers(dest="eval_name", metavar="EVAL")
    for name, module in EVALS.items():
        try:
            importlib.import_module(module).register_eval(evals)
        except ImportError:
            q = evals.add_parser(name, help="(not available in this install)")
            q.set_defaults(func=lambda args, _n=name: _missing(_n))
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _missing(name: str) -> int:
    raise SystemExit(f"atelier eval {name}: not available in this install")
