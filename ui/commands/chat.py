"""`atelier chat [--profile P] [--thread ID] [--image FILE]... [--json] MESSAGE`

Talks to the agent from a terminal: prints the answer, the tool calls and the saved image paths
(or, with --json, one JSON object with `answer`, `tool_calls` and `images`). Progress goes to
stderr. Without MESSAGE it is an interactive chat (a consent question is asked inline; `/quit`
leaves). The thread defaults to `cli`, so a follow-up command continues the same conversation.
"""

from __future__ import annotations

import json
import sys

from typing import TYPE_CHECKING

from ui.cli import add_profile_args, load_profile_from_args

if TYPE_CHECKING:  # heavy imports happen inside `run` (ui/cli.py)
    from agent.turn import TurnEvent, TurnResult


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with the agent from the terminal (one message, or interactive)")
    add_profile_args(p)
    p.add_argument("--thread", default="cli", help="conversation id (default: cli); reuse it to continue")
    p.add_argument("--user", default="local", help="user id for rate limits and the audit log")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="attach an image file or an existing ref (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    answer = p.add_mutually_exclusive_group()
    answer.add_argument("--approve", action="store_true", help="answer a pending consent question with yes")
    answer.add_argument("--decline", action="store_true", help="answer a pending consent question with no")
    p.add_argument("message", nargs="*", help="what to say (omit for an interactive chat)")
    p.set_defaults(func=run)


def _progress(event: TurnEvent) -> None:
    """Tool steps and engine progress on stderr."""
    if event.kind == "tool_start":
        print(f"-> {event.name} {json.dumps(event.args, ensure_ascii=False)}", file=sys.stderr)
    elif event.kind == "progress":
        end = "\n" if event.step >= event.total else ""
        print(f"\r   step {event.step}/{event.total}", end=end, file=sys.stderr, flush=True)
    elif event.kind == "tool_end" and not event.result.ok:
        print(f"   {event.name} failed: {event.result.error}", file=sys.stderr)


def _run_events(events) -> TurnResult | None:
    result = None
    for event in events:
        _progress(event)
        if event.kind == "done":
            result = event.result
    return result


def _as_json(result: TurnResult) -> dict:
    return {
        "thread_id": result.thread_id,
        "answer": result.answer,
        "tool_calls": [{"name": c.name, "args": c.args} for c in result.tool_calls],
        **result.model_dump(mode="json", include={"images", "consent", "refused", "error"}),
    }


def _print_text(result: TurnResult) -> None:
    for call in result.tool_calls:
        status = "ok" if call.result.ok else f"failed: {call.result.error}"
        print(f"[{call.name}] {json.dumps(call.args, ensure_ascii=False)} -> {status}")
    for image in result.images:
        print(f"saved {image.ref} ({image.width}x{image.height}): {image.path}")
        if image.line:  # what a chat shows under it: number, what changed, each person, watermark
            print(f"  {image.line}")
    if result.answer:
        print(result.answer)
    if result.consent is not None:
        print(f"? {result.consent.question}")
    if result.error is not None and result.error.message not in (result.answer or ""):
        print(f"error: {result.error.message}", file=sys.stderr)


def run(args) -> int:
    from agent import Atelier

    app = Atelier(load_profile_from_args(args))
    if app.profile.random_weights_notice:
        print(f"(profile {app.profile.name}: images come from random-weight models)", file=sys.stderr)
    session = app.session(args.thread, user_id=args.user)
    try:
        if args.approve or args.decline:
            result = _run_events(session.stream_resume(args.approve))
            return _show(result, args.json)
        if args.message:
            result = _run_events(session.stream(" ".join(args.message), args.image))
            return _show(result, args.json)
        return _interactive(session, args)
    finally:
        app.close()


def _show(result, as_json: bool) -> int:
    if as_json:
        print(json.dumps(_as_json(result), ensure_ascii=False))
    else:
        _print_text(result)
    return 1 if result.error is not None else 0


def _interactive(session, args) -> int:
    from tools.errors import AtelierError

    print(f"Atelier chat, thread {session.thread_id!r}. /quit to leave; /undo, /generate ..., /relight ... work too.",
          file=sys.stderr)
    images = list(args.image)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if not line:
            continue
        try:
            result = _run_events(session.stream(line, images))
            images = []
            while result.consent is not None:
                _print_text(result)
                reply = input("yes/no> ").strip().lower()
                result = _run_events(session.stream_resume(reply in ("y", "yes")))
        except AtelierError as err:
            print(f"error: {err}", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            session.cancel()
            print("\n(stopped)", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(_as_json(result), ensure_ascii=False))
        else:
            _print_text(result)
