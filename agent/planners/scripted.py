"""A scripted chat model for tests and demos: replies come from a list or a function.

    ScriptedModel([PlannerReply(tool_calls=[ToolCall("generate_image", {"prompt": "a fox"})]),
                   PlannerReply(text="Here is your fox.")])
    ScriptedModel(lambda messages: PlannerReply(text="hi"))

With no script it plays the demo planner of the `tiny` profile: a user message becomes a
`generate_image` call with the user's words as the prompt, and a tool result becomes a one-line
answer. It never pretends to understand anything else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.planners.base import ChatModel, PlannerReply, ToolCall, stop_requested
from tools.errors import CancelledError

Script = Callable[[list[dict[str, Any]]], PlannerReply]


def _as_reply(item: PlannerReply | str | dict[str, Any]) -> PlannerReply:
    """Accept a PlannerReply, plain answer text, or {"name": ..., "args": ...} for one call."""
    if isinstance(item, PlannerReply):
        return item
    if isinstance(item, str):
        return PlannerReply(text=item, raw=item)
    if isinstance(item, dict) and "name" in item:
        return PlannerReply(tool_calls=[ToolCall(item["name"], dict(item.get("args") or {}))],
                            raw=json.dumps(item))
    raise TypeError(f"cannot turn {item!r} into a planner reply")


def demo_script(messages: list[dict[str, Any]]) -> PlannerReply:
    """The `tiny` profile's planner: draw what the user wrote, then report the result."""
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return PlannerReply(text=f"Done. {last.get('content', '')}".strip())
    text = str(last.get("content") or "").strip()
    if "Message: " in text:  # the planner's user block: the user's own words
        text = text.split("Message: ", 1)[1].split("\n\n", 1)[0].strip()
    if not text:
        return PlannerReply(text="Tell me what to draw.")
    return PlannerReply(tool_calls=[ToolCall("generate_image", {"prompt": text[:2000]})])


class ScriptedModel(ChatModel):
    """Replies in order from a list (then repeats `then`), or computed by a function."""

    name = "scripted"

    def __init__(
        self,
        script: Iterable[PlannerReply | str | dict[str, Any]] | Script | None = None,
        *,
        then: PlannerReply | str | None = "Done.",
        think_s: float = 0.0,
    ):
        self.calls: list[list[dict[str, Any]]] = []  # the messages of every call, for assertions
        self.think_s = float(think_s)  # each reply takes this long (a stop ends the wait)
        # where a slow reply says how long it takes (set by the graph's plan node, as for the GGUF
        # planner's first-run preparation)
        self.on_status: Callable[..., None] | None = None
        if script is None:
            self._fn: Script | None = demo_script
            self._queue: list[PlannerReply] = []
        elif callable(script):
            self._fn, self._queue = script, []
        else:
            self._fn, self._queue = None, [_as_reply(item) for item in script]
        self._then = None if then is None else _as_reply(then)

    def _think(self) -> None:
        if self.on_status is not None:
            self.on_status(f"planning (this planner takes {self.think_s:g} s)")
        end = time.monotonic() + self.think_s
        while time.monotonic() < end:
            if stop_requested():
                raise CancelledError("stopped by the user")
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PlannerReply:
        self.calls.append([dict(m) for m in messages])
        if self.think_s:
            self._think()
        if self._fn is not None:
            return _as_reply(self._fn(messages))
        if self._queue:
            reply = self._queue.pop(0)
            # fresh call ids each time a reply is used
            return PlannerReply(text=reply.text, raw=reply.raw, malformed=list(reply.malformed),
                                tool_calls=[ToolCall(c.name, dict(c.args)) for c in reply.tool_calls])
        if self._then is None:
            raise RuntimeError("scripted model ran out of replies")
        return self._then
