"""`atelier bench engines`: engine and tool latency and peak memory (prints figures)."""

from __future__ import annotations

from ui.cli import add_profile_args, load_profile_from_args


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that print figures (engines)")
    benches = p.add_subparsers(dest="bench_name", metavar="BENCH")
    e = benches.add_parser("engines", help="per-step latency, per-tool latency and peak memory of the image engines")
    add_profile_args(e)
    e.add_argument("--random-weights", action="store_true",
                   help="build the full-size architectures with random weights (no download; for GPUs)")
    e.add_argument("--size", type=int, default=None, help="square size in pixels (default: the profile's 1:1 size)")
    e.add_argument("--steps", type=int, default=None, help="denoising steps (default: the profile's)")
    e.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median reported)")
    e.add_argument("--tools", default=None, help="comma-separated tools to time (default: all six)")
    e.set_defaults(func=run_engines)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_engines(args) -> int:
    from tools.engine_bench import TOOLS_MEASURED, run

    profile = load_profile_from_args(args)
    tools = tuple(t.strip() for t in args.tools.split(",")) if args.tools else TOOLS_MEASURED
    unknown = [t for t in tools if t not in TOOLS_MEASURED]
    if unknown:
        raise SystemExit(f"atelier bench engines: unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS_MEASURED)}")
    if args.size is not None and args.size < 32:
        raise SystemExit("atelier bench engines: --size must be at least 32")
    run(profile, random_weights=args.random_weights, size=args.size, steps=args.steps, repeats=max(1, args.repeats),
        tools=tools)
    return 0
