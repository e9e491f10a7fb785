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
    return PlannerReply(tool_calls=[ToolCall(name, args)])


def last_tool_message(messages: list[dict]) -> dict:
    return [m for m in messages if m["role"] == "tool"][-1]
