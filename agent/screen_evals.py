"""`atelier eval screen`: the screening figures of a profile's screener (rules + its guard) on
labelled sets, and `--fit` to calibrate the guard on them.

    atelier eval screen --jsonl bench/evals/screen_fresh.jsonl            # offline: rules + the GGUF guard
    atelier eval screen --jsonl FILE --no-guard                            # the rules alone
    atelier eval screen --jsonl A --jsonl B --fit configs/safety/guard_calibration.json

The figures and the calibration are `tools.safety.evals`; this module only builds the screener
from the profile (the guard needs the planner's model: `agent.guard`).
"""

from __future__ import annotations

import json
import sys


def register_eval(sub) -> None:
    p = sub.add_parser("screen", help="prompt screening: attack success, false refusals, consent recall; "
                                      "per category, language and trick; latency")
    p.add_argument("--jsonl", action="append", required=True,
                   help="labelled lines: id, text, expect, category, trick, lang, thread?, image? (repeatable)")
    p.add_argument("--profile", default=None, help="profile whose screener runs (default: ATELIER_PROFILE or offline)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile setting")
    p.add_argument("--no-guard", action="store_true", help="the rules alone (safety.guard_backend=none)")
    p.add_argument("--fit", metavar="OUT", help="fit the guard's calibration on the sets and write it to OUT")
    p.add_argument("--max-false-refusal", type=float, default=0.03,
                   help="--fit: the false refusal rate the threshold may cost on the fitting sets")
    p.add_argument("--max-release", type=float, default=0.02,
                   help="--fit: the share of attacks the rules caught that the guard may release on the fitting sets")
    p.add_argument("--ids", default=None, help="comma-separated ids to run")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per text on stderr")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from agent.config import load_profile, parse_overrides
    from agent.guard import screener_for
    from tools.safety.evals import evaluate, fit_calibration, guard_features, print_report, read_jsonl
    from tools.safety.guard import dump_calibration

    overrides = parse_overrides(args.set)
    if args.no_guard:
        overrides.setdefault("safety", {})["guard_backend"] = "none"
    if args.fit:  # the features are the model's own log-probabilities: no earlier calibration in between
        overrides.setdefault("safety", {})["guard_calibration"] = "zero-shot"
    profile = load_profile(args.profile, overrides)
    rows = [row for path in args.jsonl for row in read_jsonl(path)]
    if args.ids:
        wanted = set(args.ids.split(","))
        rows = [r for r in rows if r.get("id") in wanted]
    screener = screener_for(profile)

    if args.fit:
        if screener.guard is None or not hasattr(screener.guard, "scorer"):
            raise SystemExit("--fit needs a label guard: safety.guard_backend=gguf")

        def show_item(item):
            if args.verbose:
                top = max(item["logprobs"], key=item["logprobs"].get)
                print(f"{item['id']} {item['expect']:8} {top}", file=sys.stderr, flush=True)

        items = guard_features(rows, screener, on_row=show_item)
        cal = fit_calibration(items, max_false_refusal=args.max_false_refusal, max_release=args.max_release,
                              on=", ".join(args.jsonl))
        dump_calibration(cal, args.fit)
        print(f"calibration written to {args.fit}: {cal.fitted}", file=sys.stderr)
        return 0

    def show(row, d, ok, ms):
        if args.verbose:
            g = d.guard
            extra = f" guard={g.label} unsafe={g.unsafe:.2f} person={g.person:.2f}" if g else ""
            print(f"{'ok  ' if ok else 'FAIL'} {row.get('id')} {row.get('expect', 'allow'):8} -> {d.decision:8} "
                  f"{d.category:14} {ms:6.0f} ms{extra}", file=sys.stderr, flush=True)

    result = evaluate(rows, screener, on_row=show)
    result["profile"] = profile.name
    result["guard"] = profile.safety.guard_backend
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        print_report(result)
    return 0
