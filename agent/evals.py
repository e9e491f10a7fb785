"""`atelier eval planner`: how often the planner picks the right tool with the right arguments.

A case (one JSON line, format of `../shared/evals/planner_dev.jsonl`):

    {"id": "...", "images": [{"ref", "desc", "origin", "parent"?}], "history": [{"role", "text"}],
     "message": "...", "expect": {"tool": "<name>" | "none", "args": {"<arg>": {<matcher>: value}}}}

The case's images are shown to the planner as the session's image list (by number, oldest first,
the last one current; `"attached": true` marks a photo sent with the message; `"args"` are the
contract arguments of the tool that made a derived version), its history is replayed as the
conversation, the message is sent, and the FIRST call the turn would run is checked: the plan
step (`agent.planners.checking.plan_step`) turns the model's reply into contract calls (its words
translated by `agent.intents`, its images resolved by `agent.resolver`), then the tool name, that
the arguments validate against the tool contract (`tools.schemas.validate_call`; defaults filled
in), and every matcher. What is checked is what the turn decides before its first tool runs:
- the request screen first (`--no-screen` leaves it out): a request it refuses never reaches the
  planner, so the turn makes no tool call;
- then the plan step: a reply it sends back (unreadable, invalid arguments, an image the chat does
  not have, "Done" with no call) gets that one repair round too; a call it answers itself (no
  image in the chat, a revert to the image on screen) is scored as that answer.
The report also gives how many first replies were right (`--no-repair` scores first replies only).
`tool: none` passes when the reply has no tool call. Matchers: `eq`, `ne`, `in`, `not_in`, `lt`,
`le`, `gt`, `ge`, `between` [lo, hi] (inclusive), `len`, `contains_any`, `contains_all`,
`not_contains` (case-insensitive substrings of a string, or members of a list), `present`, `absent`,
`regex`.

Prints accuracy overall and per expected tool and the per-turn planner latency (mean, p50, p90);
`--json` prints one JSON object instead.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from agent.planners.base import ChatModel, PlannerReply, ToolCall
from agent.prompting import build_messages, say
from tools.errors import AtelierError, ToolArgumentError
from tools.schemas import validate_call


class EvalCaseError(AtelierError):
    code = "bad_eval_case"


_MISSING = object()


def _text(v: Any) -> str:
    return v.lower() if isinstance(v, str) else json.dumps(v).lower()


def _contains(value: Any, needle: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_text(needle) == _text(v) or (isinstance(v, str) and _text(needle) in _text(v)) for v in value)
    return _text(needle) in _text(value)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None and not isinstance(a, str) and not isinstance(b, str):
        return abs(na - nb) < 1e-9
    return a == b


def _cmp(op: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    def check(value: Any, bound: Any) -> bool:
        n = _num(value)
        return n is not None and op(n, float(bound))
    return check


MATCHERS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _eq,
    "ne": lambda v, x: not _eq(v, x),
    "in": lambda v, xs: any(_eq(v, x) for x in xs),
    "not_in": lambda v, xs: not any(_eq(v, x) for x in xs),
    "lt": _cmp(lambda a, b: a < b),
    "le": _cmp(lambda a, b: a <= b),
    "gt": _cmp(lambda a, b: a > b),
    "ge": _cmp(lambda a, b: a >= b),
    "between": lambda v, r: _num(v) is not None and float(r[0]) <= _num(v) <= float(r[1]),
    "len": lambda v, n: isinstance(v, (list, tuple, str)) and len(v) == n,
    "contains_any": lambda v, xs: v is not None and any(_contains(v, x) for x in xs),
    "contains_all": lambda v, xs: v is not None and all(_contains(v, x) for x in xs),
    "not_contains": lambda v, xs: v is None or not any(_contains(v, x) for x in (xs if isinstance(xs, list) else [xs])),
    "regex": lambda v, p: isinstance(v, str) and re.search(p, v, re.I) is not None,
}


def check_arg(matcher: dict[str, Any], value: Any) -> str | None:
    """None when `value` satisfies every matcher of `matcher`, else a short reason."""
    for op, want in matcher.items():
        if op == "present":
            ok = (value is not _MISSING and value is not None) == bool(want)
        elif op == "absent":
            ok = (value is _MISSING or value is None) == bool(want)
        elif op in MATCHERS:
            ok = value is not _MISSING and MATCHERS[op](value, want)
        else:
            raise EvalCaseError(f"unknown matcher {op!r}; known: {', '.join([*MATCHERS, 'present', 'absent'])}")
        if not ok:
            shown = "missing" if value is _MISSING else json.dumps(value, ensure_ascii=False)
            return f"{op} {json.dumps(want, ensure_ascii=False)} failed (got {shown})"
    return None


@dataclass
class CaseResult:
    id: str
    expected: str
    got: str
    ok: bool
    reason: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    raw: str = ""
    seconds: float = 0.0
    first_ok: bool = False  # the model's first reply, before the plan step's repair
    repair: str = ""  # what the plan step did with the model's reply (or the screen's refusal), when anything
    screened: bool = False  # refused by the request screen before the planner ran


def score_reply(case: dict[str, Any], reply: PlannerReply) -> CaseResult:
    """Check the first tool call of `reply` against `case["expect"]`."""
    expect = case.get("expect") or {}
    want_tool = expect.get("tool")
    if not want_tool:
        raise EvalCaseError(f"case {case.get('id')!r}: expect.tool is missing")
    first = reply.tool_calls[0] if reply.tool_calls else None
    got = first.name if first else ("malformed" if reply.malformed else "none")
    res = CaseResult(id=str(case.get("id")), expected=want_tool, got=got, ok=False,
                     args=dict(first.args) if first else {}, text=reply.text, raw=reply.raw[:400])
    if want_tool == "none":
        res.ok = first is None and not reply.malformed
        res.reason = "" if res.ok else f"expected no tool call, got {got}"
        return res
    if first is None:
        res.reason = "no tool call" + (f" (unreadable: {reply.malformed[0][:80]!r})" if reply.malformed else "")
        return res
    if first.name != want_tool:
        res.reason = f"wrong tool {first.name}"
        return res
    try:
        args = validate_call(first.name, first.args).model_dump()
    except ToolArgumentError as err:
        res.reason = f"invalid arguments: {err}"
        return res
    res.args = {k: v for k, v in args.items() if v is not None} | {k: v for k, v in first.args.items() if k not in args}
    for name, matcher in (expect.get("args") or {}).items():
        value = args.get(name, _MISSING)
        if isinstance(value, tuple):
            value = list(value)
        why = check_arg(matcher, value)
        if why:
            res.reason = f"{name}: {why}"
            return res
    res.ok = True
    return res


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise EvalCaseError(f"eval file {str(path)!r} does not exist")
    cases = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except ValueError as err:
            raise EvalCaseError(f"{p.name}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(case, dict) or "message" not in case or "expect" not in case:
            raise EvalCaseError(f"{p.name}:{n}: a case needs 'message' and 'expect'")
        cases.append(case)
    return cases


def case_images(case: dict[str, Any]) -> list[dict[str, Any]]:
    """A case's images as the session's versions: an image made by a tool with its `args` carries
    them as its `tool_call` (as a stored version does)."""
    out = []
    for image in case.get("images") or []:
        image = dict(image)
        origin = str(image.get("origin") or "upload")
        if "tool_call" not in image and origin not in ("upload", "uploaded"):
            name = {"generated": "generate_image", "edited": "edit_image"}.get(origin, origin)
            image["tool_call"] = {"name": name, "args": dict(image.get("args") or {})}
        out.append(image)
    return out


def case_facts(case: dict[str, Any]):
    """The conversation's facts of a case (`agent.resolver.Facts`): its images, the last one
    current, the ones marked `attached` sent with the message."""
    from agent.resolver import Facts

    images = case_images(case)
    attached = [str(im["ref"]) for im in images if im.get("attached")]
    return Facts.of(images, None, attached)


def case_messages(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The planner's messages for a case: its images as the session's list, history replayed."""
    facts = case_facts(case)
    return build_messages(history=case.get("history") or [], images=case_images(case),
                          user_text=case["message"], attached=facts.attached)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Planned(NamedTuple):
    """What the turn decided for a case: the model's first reply translated by the plan step
    (the refusal when the request screen refused), the final decision after a repair round (None
    when there was none), what the plan step did."""

    first: PlannerReply
    final: PlannerReply | None
    problem: str = ""
    screened: bool = False  # refused by the request screen: the planner never ran


def _decided(step) -> PlannerReply:
    """A plan step's outcome as a reply to score: its contract calls, or its answer."""
    if step.calls:
        return PlannerReply(tool_calls=[ToolCall(c.name, dict(c.args)) for c in step.calls])
    return PlannerReply(text=step.answer or "")


def plan_case(planner: ChatModel, case: dict[str, Any], tools: list[dict[str, Any]] | None = None, *,
              repair: bool = True, screener: Any = None) -> Planned:
    """What the turn decides for a case before any tool runs: the request screen (`screener`, a
    `tools.safety.PromptScreener`; None leaves it out), the model's reply, and the plan step
    (`agent.planners.checking.plan_step`: the planner's words become contract calls, images are
    resolved by the case's facts; an unreadable or invalid call gets one repair round)."""
    from agent.intents import plan_json_schemas
    from agent.planners.checking import plan_step

    tools = tools or plan_json_schemas()
    message = str(case["message"])
    if screener is not None:
        decision = screener.screen(message)
        if decision.refused:
            refusal = PlannerReply(text=say("refused", reason=decision.reason))
            return Planned(refusal, None, f"refused by the request screen ({decision.category})", screened=True)
    messages = case_messages(case)
    facts = case_facts(case)
    reply = planner.chat(messages, tools)
    step = plan_step(reply, facts, deciding=True, can_repair=repair)
    first = _decided(plan_step(reply, facts, deciding=True, can_repair=False))
    if not step.repairs:
        return Planned(first, None if not step.kind else _decided(step), step.problem)
    again = planner.chat(messages + step.exchange, tools)
    return Planned(first, _decided(plan_step(again, facts, deciding=True, can_repair=False)), step.problem)


def run_eval(
    planner: ChatModel,
    cases: list[dict[str, Any]],
    *,
    on_result: Callable[[CaseResult], None] | None = None,
    repair: bool = True,
    screener: Any = None,
) -> dict[str, Any]:
    """Run every case as the turn would up to its first tool call: the request screen (when a
    `screener` is given), the planner, the plan step's checks (one repair round unless
    `repair=False`); return the report (see `summarize`)."""
    from agent.intents import plan_json_schemas

    tools = plan_json_schemas()
    results = []
    for case in cases:
        t0 = time.perf_counter()
        planned = plan_case(planner, case, tools, repair=repair, screener=screener)
        seconds = time.perf_counter() - t0
        res = score_reply(case, planned.final or planned.first)
        res.first_ok = res.ok if planned.final is None else score_reply(case, planned.first).ok
        res.repair = planned.problem
        res.screened = planned.screened
        res.seconds = seconds
        results.append(res)
        if on_result:
            on_result(res)
    return summarize(results)


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    per_tool: dict[str, dict[str, Any]] = {}
    for r in results:
        t = per_tool.setdefault(r.expected, {"n": 0, "correct": 0})
        t["n"] += 1
        t["correct"] += int(r.ok)
    for t in per_tool.values():
        t["accuracy"] = t["correct"] / t["n"]
    secs = [r.seconds for r in results]
    correct = sum(r.ok for r in results)
    first = sum(r.first_ok for r in results)
    return {
        "cases": len(results),
        "correct": correct,
        "accuracy": correct / len(results) if results else 0.0,
        "first_reply_correct": first,  # before the plan step's repair round
        "repaired": sum(bool(r.repair) and not r.screened for r in results),
        "refused_by_screen": sum(r.screened for r in results),
        "per_tool": dict(sorted(per_tool.items())),
        "latency_s": {
            "mean": sum(secs) / len(secs) if secs else 0.0,
            "p50": _percentile(secs, 0.5),
            "p90": _percentile(secs, 0.9),
            "max": max(secs) if secs else 0.0,
        },
        "failures": [asdict(r) for r in results if not r.ok],
    }


def make_planner(profile) -> ChatModel:
    """The profile's planner (GGUF here; other kinds through the agent's planner factory)."""
    if profile.planner.kind == "gguf":
        from agent.planners.gguf import GGUFPlanner

        return GGUFPlanner(profile.planner, root=profile.store.root)
    import agent.planners as planners

    factory = getattr(planners, "make_planner", None) or getattr(planners, "build_planner", None)
    if factory is None:
        raise EvalCaseError(f"planner kind {profile.planner.kind!r} cannot be evaluated in this install")
    return factory(profile)


def _print_report(report: dict[str, Any], profile_name: str, out=sys.stdout) -> None:
    lat = report["latency_s"]
    print(f"planner eval ({profile_name}): {report['correct']}/{report['cases']} correct "
          f"= {report['accuracy']:.1%}", file=out)
    print(f"  first reply (before the plan step's repair round): {report['first_reply_correct']}/{report['cases']}; "
          f"sent back or answered by the plan step: {report['repaired']}; "
          f"refused by the request screen: {report['refused_by_screen']}", file=out)
    for tool, t in report["per_tool"].items():
        print(f"  {tool:<16} {t['correct']:>3}/{t['n']:<3} {t['accuracy']:.0%}", file=out)
    print(f"latency per turn: mean {lat['mean']:.2f} s, p50 {lat['p50']:.2f} s, p90 {lat['p90']:.2f} s, "
          f"max {lat['max']:.2f} s", file=out)


def register_eval(subparsers) -> None:
    from agent.config import add_profile_arguments

    p = subparsers.add_parser("planner", help="tool choice + argument accuracy and latency of the planner")
    add_profile_arguments(p)
    p.add_argument("--jsonl", required=True, help="cases, one JSON object per line")
    p.add_argument("--limit", type=int, default=None, help="run only the first N cases")
    p.add_argument("--ids", default=None, help="comma-separated case ids to run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case as it finishes")
    p.add_argument("--no-repair", action="store_true",
                   help="score the model's first reply only (no repair round, unlike a real turn)")
    p.add_argument("--no-screen", action="store_true",
                   help="leave out the request screen (a real turn refuses screened requests before planning)")
    p.set_defaults(func=run)


def run(args) -> int:
    from agent.config import profile_from_arguments

    profile = profile_from_arguments(args)
    cases = load_cases(args.jsonl)
    if args.ids:
        wanted = {i.strip() for i in args.ids.split(",") if i.strip()}
        cases = [c for c in cases if str(c.get("id")) in wanted]
    if args.limit is not None:
        cases = cases[: args.limit]
    if not cases:
        raise EvalCaseError("no cases to run")
    planner = make_planner(profile)

    def show(r: CaseResult) -> None:
        if args.verbose or not r.ok:
            mark = "ok  " if r.ok else "FAIL"
            detail = "" if r.ok else f"  [{r.reason}] args={json.dumps(r.args, ensure_ascii=False)[:200]}"
            if not r.ok and r.got == "none" and r.text:
                detail += f" text={r.text[:120]!r}"
            if r.repair:
                detail += f"  (repaired: {r.repair[:100]!r}; first reply {'ok' if r.first_ok else 'wrong'})"
            print(f"{mark} {r.id} {r.expected:<15} {r.seconds:5.1f}s{detail}", file=sys.stderr, flush=True)

    screener = None
    if not args.no_screen:
        from agent.guard import screener_for

        screener = screener_for(profile)  # the rules and the guard of a turn
    report = run_eval(planner, cases, on_result=show, repair=not args.no_repair, screener=screener)
    report["profile"] = profile.name
    report["planner"] = {"kind": profile.planner.kind, "chat_format": getattr(profile.planner, "chat_format", None)}
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_report(report, profile.name)
    return 0
