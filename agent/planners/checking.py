"""What is wrong with a planner's tool calls before anything runs.

The plan step (and the planner eval, which measures the plan step) reads a reply, checks its calls
here and, when something is wrong, gives the model one chance to fix it with the problems spelled
out (`prompts/turn.yaml`: `repair_call`). The checks are the contract and the session's state,
nothing about any particular request:

- the tool exists and its arguments validate (`tools.schemas.validate_call`);
- every image argument is an image of this chat (a made-up ref, or words where a ref belongs, with
  no image at all means the user has to upload one first);
- `revert` goes to an image other than the current one (reverting to it changes nothing);
- `edit_image` does not give its own image as a reference;
- before any tool ran this turn, a text reply does not say "Done" (nothing was done).

A call that still has problems after the repair goes on to the turn's own validation, which
returns the error to the model as a tool message.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from agent.planners.base import PlannerReply, ToolCall
from agent.planners.parsing import format_tool_call
from agent.prompting import REPAIR_FLAG, say
from tools.errors import ToolArgumentError
from tools.schemas import validate_call


def _image_args(args: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [("image", args["image"])] if "image" in args else []
    refs = args.get("references")
    if isinstance(refs, list):
        out.extend(("references", r) for r in refs)
    return out


def _problems_of(call: ToolCall, known: list[str], current: str | None) -> list[str]:
    args = call.args if isinstance(call.args, dict) else {}
    unknown = [(where, ref) for where, ref in _image_args(args) if ref not in known]
    problems = []
    for where, ref in unknown:  # before validation: "not an image of this chat" reads better than a regex
        if not known:
            problems.append(f"{call.name}: {where} {ref!r}: there are no images in this chat yet; "
                            "ask the user to upload the photo first")
        else:
            problems.append(f"{call.name}: {where} {ref!r} is not an image of this chat; "
                            f"use one of {', '.join(known)}")
    if unknown:
        return problems
    try:
        validate_call(call.name, call.args)
    except ToolArgumentError as err:
        return [str(err)]
    if call.name == "revert" and current and args.get("image") == current:
        problems.append(f"revert: {current} is already the current image; give the earlier version to go back to")
    if call.name == "edit_image" and args.get("image") in (args.get("references") or []):
        problems.append("edit_image: references must be other images than image itself")
    return problems


def call_problems(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None) -> list[list[str]]:
    """The problems of each of the reply's tool calls, in order (an empty list: that call can run)."""
    known = list(dict.fromkeys(refs))
    return [_problems_of(call, known, current) for call in reply.tool_calls]


# a reply that reports a change as made ("Done", "Done: img_x") although no tool ran this turn
_CLAIMS_DONE = re.compile(r"^\s*done\b", re.IGNORECASE)


def review(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None,
           deciding: bool = False) -> tuple[str, str] | None:
    """Whether a reply goes back to the model: `("repair", problem)` when no call could be read,
    `("repair_call", problems)` when its first call has problems, None when it can go on. The
    kinds name the texts of `prompts/turn.yaml` that ask for the repair. While `deciding` (no
    tool has run yet this turn), a text that says "Done" without any call is sent back too
    (`"repair_done"`): nothing changes without a tool call.

    Later calls with problems do not send a good first call back: they are dropped from the reply
    (a small model likes to add calls on images that do not exist yet, e.g. the one its first
    call will make; the model plans again after the first result anyway)."""
    if reply.malformed and not reply.tool_calls:
        return "repair", "; ".join(m[:300] for m in reply.malformed)
    if deciding and not reply.tool_calls and _CLAIMS_DONE.match(reply.text or ""):
        return "repair_done", (reply.text or "").strip()[:200]
    per_call = call_problems(reply, refs=refs, current=current)
    if per_call and per_call[0]:
        return "repair_call", "; ".join(p for problems in per_call for p in problems)
    reply.tool_calls = [call for call, problems in zip(reply.tool_calls, per_call) if not problems]
    return None


def repair_messages(reply: PlannerReply, request: str) -> list[dict[str, Any]]:
    """The exchange that asks for a repair: the model's reply as it was, then the request."""
    said = reply.raw or "\n".join([reply.text, *(format_tool_call(c.name, c.args) for c in reply.tool_calls)]).strip()
    return [{"role": "assistant", "content": said, REPAIR_FLAG: True},
            {"role": "user", "content": request, REPAIR_FLAG: True}]


def repair_request(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None,
                   deciding: bool = False) -> tuple[str, str, list[dict[str, Any]]] | None:
    """What the plan step sends back for `reply` (see `review`): `(kind, problem, exchange)`, the
    exchange being the messages to append before asking the model again; None when it can go on."""
    verdict = review(reply, refs=refs, current=current, deciding=deciding)
    if verdict is None:
        return None
    kind, problem = verdict
    return kind, problem, repair_messages(reply, say(kind, problem=problem))
