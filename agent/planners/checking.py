"""What is wrong with a planner's tool calls before anything runs.

The plan step (and the planner eval, which measures the plan step) reads a reply, checks its calls
here and, when something is wrong, gives the model one chance to fix it with the problems spelled
out (`prompts/turn.yaml`: `repair_call`). The checks are the contract and the session's state,
nothing about any particular request:

- the tool exists and its arguments validate (`tools.schemas.validate_call`);
- every image argument is an image of this chat (a made-up ref, or words where a ref belongs, with
  no image at all means the user has to upload one first);
- `revert` goes to an image other than the current one (reverting to it changes nothing);
- `edit_image` does not give its own image as a reference.

A call that still has problems after the repair goes on to the turn's own validation, which
returns the error to the model as a tool message.
"""

from __future__ import annotations

from typing import Any, Iterable

from agent.planners.base import PlannerReply
from agent.planners.parsing import format_tool_call
from tools.errors import ToolArgumentError
from tools.schemas import validate_call

REPAIR_FLAG = "repair"  # set on the messages of a repair exchange (the transcript leaves them out)


def _image_args(args: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [("image", args["image"])] if "image" in args else []
    refs = args.get("references")
    if isinstance(refs, list):
        out.extend(("references", r) for r in refs)
    return out


def call_problems(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None) -> list[str]:
    """One readable line per problem of the reply's tool calls (empty: nothing to repair)."""
    known = list(dict.fromkeys(refs))
    problems: list[str] = []
    for call in reply.tool_calls:
        args = call.args if isinstance(call.args, dict) else {}
        unknown = [(where, ref) for where, ref in _image_args(args) if ref not in known]
        for where, ref in unknown:  # before validation: "not an image of this chat" reads better than a regex
            if not known:
                problems.append(f"{call.name}: {where} {ref!r}: there are no images in this chat yet; "
                                "ask the user to upload the photo (or use generate_image for a new picture)")
            else:
                problems.append(f"{call.name}: {where} {ref!r} is not an image of this chat; "
                                f"use one of {', '.join(known)}")
        if unknown:
            continue
        try:
            validate_call(call.name, call.args)
        except ToolArgumentError as err:
            problems.append(str(err))
            continue
        if call.name == "revert" and current and args.get("image") == current:
            problems.append(f"revert: {current} is already the current image; "
                            "give the earlier version to go back to")
        if call.name == "edit_image" and args.get("image") in (args.get("references") or []):
            problems.append("edit_image: references must be other images than image itself")
    return problems


def review(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None) -> tuple[str, str] | None:
    """Whether a reply goes back to the model: `("repair", problem)` when no call could be read,
    `("repair_call", problems)` when its calls have problems, None when it can go on. The kinds
    name the texts of `prompts/turn.yaml` that ask for the repair."""
    if reply.malformed and not reply.tool_calls:
        return "repair", "; ".join(m[:300] for m in reply.malformed)
    problems = call_problems(reply, refs=refs, current=current)
    return ("repair_call", "; ".join(problems)) if problems else None


def repair_messages(reply: PlannerReply, request: str) -> list[dict[str, Any]]:
    """The exchange that asks for a repair: the model's reply as it was, then the request."""
    said = reply.raw or "\n".join([reply.text, *(format_tool_call(c.name, c.args) for c in reply.tool_calls)]).strip()
    return [{"role": "assistant", "content": said, REPAIR_FLAG: True},
            {"role": "user", "content": request, REPAIR_FLAG: True}]
