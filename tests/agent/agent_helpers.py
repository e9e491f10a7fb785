"""Small helpers shared by the agent tests (importable because pytest puts this folder on sys.path)."""

from __future__ import annotations

from agent.planners.base import PlannerReply, ToolCall

TINY_SIZES = {"1:1": [64, 64], "16:9": [96, 48], "9:16": [48, 96], "4:3": [64, 48], "3:4": [48, 64],
              "3:2": [96, 64], "2:3": [64, 96]}


def tiny_overrides(root, **sections) -> dict:
    """The tiny profile in a temporary data root: 2 steps, 64 px images, a generous rate limit."""
    overrides = {
        "store": {"root": str(root)},
        "engine": {"steps": 2, "sizes": TINY_SIZES},
        "limits": {"per_user": "1000/minute"},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return overrides


def call(name: str, **args) -> PlannerReply:
    """A planner reply with one tool call (friendly or contract arguments; `image` may be left out)."""
    return PlannerReply(tool_calls=[ToolCall(name, args)])


def calls(*items: tuple[str, dict]) -> PlannerReply:
    """A planner reply with several tool calls: calls(("relight_image", {...}), ("adjust_image", {...}))."""
    return PlannerReply(tool_calls=[ToolCall(name, dict(args)) for name, args in items])


def planner_request(messages: list[dict]) -> str:
    """The user block one planner call read (images list, transcript, `Message: ...`): the last
    user message that is not part of a repair exchange."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user" and not m.get("repair"))


def last_tool_message(messages: list[dict]) -> dict:
    """The last tool message of a conversation (e.g. `Session.messages()`): the tool result as the
    transcript keeps it. The planner never reads one within its turn any more: the answer is
    composed from the turn's records (`TurnResult.tool_calls`)."""
    return [m for m in messages if m["role"] == "tool"][-1]
