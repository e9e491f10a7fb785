"""The plan step: what the turn does with a planner's reply before anything runs.

The planner writes calls in its own words (`agent.intents`); here each is turned into a call of
the contract, its images resolved by the conversation's facts (`agent.resolver`). The checks are
the contract and the session's state, nothing about any particular request or language:

- the reply can be read, the tool exists, its arguments fit the planner's schema and the contract;
- every image it names is an image of this chat (with no image at all, the user has to upload
  one: the turn asks, the model is not asked again);
- `revert` goes to an image other than the current one; `edit_image` does not give its own image
  as a reference (dropped);
- `adjust_image` changes something, and (deterministic) does not repeat the adjustment that made
  the current image from its parent (that makes the same image again);
- before any tool ran this turn, a text reply does not say "Done" (nothing was done).

A reply with a problem goes back to the model once, asking it to fix *that call* (the same tool,
the same request); it is never steered towards another action. When it cannot be fixed (a
second failure, an image that does not exist, a revert to the version on screen) the turn
answers with the problem in plain words instead. Later calls of a reply that have problems are
dropped (a small model likes to add calls on images that do not exist yet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.intents import to_contract
from agent.planners.base import PlannerReply, ToolCall
from agent.planners.parsing import format_tool_call
from agent.prompting import REPAIR_FLAG, say
from agent.resolver import Facts, PlanError
from agent.turn import PendingCall
from tools.adjust import NO_CHANGE, changes_nothing
from tools.errors import ToolArgumentError
from tools.schemas import validate_call

# a reply that reports a change as made ("Done", "Done: img_x") although no tool ran this turn
_CLAIMS_DONE = re.compile(r"^\s*done\b", re.IGNORECASE)


class CallProblem(Exception):
    """Why one planned call cannot run: `fixable` ones go back to the model once."""

    def __init__(self, message: str, *, fixable: bool = True):
        super().__init__(message)
        self.fixable = fixable


def _recreates(name: str, args: dict[str, Any], facts: Facts) -> bool:
    """`adjust_image` is deterministic: the adjustment that made the current image from its parent,
    applied to that parent again, makes the same image."""
    if name != "adjust_image" or not facts.current:
        return False
    made = facts.get(facts.current)
    if made is None or made.tool != name or made.parent != args.get("image"):
        return False
    try:
        before = validate_call(name, {**made.args, "image": made.parent})
        now = validate_call(name, args)
    except ToolArgumentError:
        return False
    return before.model_dump(exclude_none=True) == now.model_dump(exclude_none=True)


def _fitting_tool(name: str, args: dict[str, Any]) -> str | None:
    """The one other tool whose planner arguments include every argument of a call that does not
    fit its own tool (`reframe_image` with `rotate`, `rotate_degrees` is an `adjust_image`)."""
    from agent.intents import PLAN_MODELS, _CONTRACT_KEYS

    def fields(tool: str) -> set[str]:
        return set(PLAN_MODELS[tool].model_fields) | _CONTRACT_KEYS.get(tool, set())

    keys = set(args) - {"image"}
    if not keys or (name in PLAN_MODELS and keys <= fields(name)):
        return None
    fits = [tool for tool in PLAN_MODELS if tool != name and keys <= fields(tool) and tool != "generate_image"]
    return fits[0] if len(fits) == 1 else None


def contract_call(call: ToolCall, facts: Facts) -> PendingCall:
    """One planned call as a contract call (raises `CallProblem`). A call whose arguments all
    belong to one other tool is that tool's call (the arguments say what it does)."""
    if not isinstance(call.args, dict):
        raise CallProblem(f"{call.name}: arguments must be a JSON object")
    other = _fitting_tool(call.name, call.args)
    if other is not None:
        call = ToolCall(other, dict(call.args), id=call.id)
    try:
        args = to_contract(call.name, call.args, facts)
    except PlanError as err:
        # an image the chat does not have cannot be fixed by the model when there is none at all
        raise CallProblem(str(err), fixable=bool(facts.versions)) from None
    except ToolArgumentError as err:
        raise CallProblem(str(err)) from None
    if call.name == "revert" and args["image"] == facts.current:
        # with no earlier version at all a revert cannot be what was asked: the model may reconsider
        alone = len(facts.versions) == 1 and not facts.previous()
        raise CallProblem(say("already_current", label=facts.label(args["image"])), fixable=alone)
    if call.name == "adjust_image" and changes_nothing(**validate_call(call.name, args).model_dump()):
        raise CallProblem(f"adjust_image: {NO_CHANGE}; give the values of the change the user asked for")
    if _recreates(call.name, args, facts):
        raise CallProblem(f"adjust_image: these are the settings that made the current image from "
                          f"{facts.label(args['image'])}, so nothing would change; give the values the user asked for")
    return PendingCall(id=call.id, name=call.name, args=args, said=dict(call.args))


@dataclass
class PlanStep:
    """What the turn does with a reply: run `calls`, send `exchange` back to the model (a repair),
    or end the turn with `answer` (plain text: the model's own, or the plan step's)."""

    calls: list[PendingCall] = field(default_factory=list)
    answer: str | None = None
    exchange: list[dict[str, Any]] = field(default_factory=list)
    kind: str = ""  # "" | "repair" | "repair_call" | "repair_done" | "ask_upload" | "cannot_plan"
    problem: str = ""

    @property
    def repairs(self) -> bool:
        return bool(self.exchange)


def needs_image(reply: PlannerReply) -> bool:
    """Every call of the reply works on an existing image (none creates one)."""
    return bool(reply.tool_calls) and all(c.name != "generate_image" for c in reply.tool_calls)


def plan_step(reply: PlannerReply, facts: Facts, *, deciding: bool = True, can_repair: bool = True) -> PlanStep:
    """The plan step for `reply` (see the module docstring). `deciding`: no tool has run yet this
    turn; `can_repair`: the turn may still send one reply back to the model."""
    if reply.malformed and not reply.tool_calls:
        problem = "; ".join(m[:300] for m in reply.malformed)
        if can_repair:
            return PlanStep(kind="repair", problem=problem, exchange=repair_messages(reply, say("repair", problem=problem)))
        return PlanStep(kind="repair", problem=problem, answer=say("repair_failed"))
    if not reply.tool_calls:
        text = (reply.text or "").strip()
        if deciding and _CLAIMS_DONE.match(text):
            if can_repair:
                return PlanStep(kind="repair_done", problem=text[:200],
                                exchange=repair_messages(reply, say("repair_done")))
            return PlanStep(kind="repair_done", problem=text[:200], answer=say("no_answer"))
        return PlanStep(answer=text or say("no_answer"))
    if not facts.versions and needs_image(reply):
        return PlanStep(kind="ask_upload", problem=f"{reply.tool_calls[0].name} needs an image and the chat has none",
                        answer=say("ask_upload"))
    calls: list[PendingCall] = []
    for n, call in enumerate(reply.tool_calls):
        try:
            calls.append(contract_call(call, facts))
        except CallProblem as problem:
            if n > 0:  # a later call with a problem is dropped; the first ones run
                continue
            if problem.fixable and can_repair:
                return PlanStep(kind="repair_call", problem=str(problem),
                                exchange=repair_messages(reply, say("repair_call", problem=str(problem))))
            return PlanStep(kind="cannot_plan", problem=str(problem), answer=say("cannot_plan", problem=str(problem)))
    return PlanStep(calls=calls)


def repair_messages(reply: PlannerReply, request: str) -> list[dict[str, Any]]:
    """The exchange that asks for a repair: the model's reply as it was, then the request."""
    said = reply.raw or "\n".join([reply.text, *(format_tool_call(c.name, c.args) for c in reply.tool_calls)]).strip()
    return [{"role": "assistant", "content": said, REPAIR_FLAG: True},
            {"role": "user", "content": request, REPAIR_FLAG: True}]
