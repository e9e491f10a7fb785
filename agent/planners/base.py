"""The one interface every planner backend implements.

Messages are OpenAI-style dicts (`role` in system/user/assistant/tool, `content` a string,
assistant `tool_calls`, tool `tool_call_id`); tools are OpenAI function schemas
(`tools.schemas.tool_json_schemas()`). A backend returns a `PlannerReply`: the text the user
should read and the tool calls it wants, already parsed (backends that produce Qwen's native
`<tool_call>` text parse it with `agent.planners.parsing`).
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from tools.schemas import storable


@dataclass
class ToolCall:
    name: str
    args: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])

    def as_dict(self) -> dict[str, Any]:
        """The call as the turn's state holds it (checkpointed before it is validated, so a value
        no checkpoint can hold, such as a seed of 10**30 or NaN, is kept as text for the contract
        to refuse)."""
        return {"id": self.id, "name": self.name, "args": storable(self.args)}


@dataclass
class PlannerReply:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: str = ""  # the model's raw output, for debugging and repair prompts
    # calls the parser could not read (near-JSON beyond repair): returned to the model once
    malformed: list[str] = field(default_factory=list)
    # tokens this call cost, as the model counted them: {"prompt_tokens": n, "completion_tokens": m}
    usage: dict[str, int] = field(default_factory=dict)


class ChatModel(abc.ABC):
    """A chat model that can plan tool calls."""

    name: str = "chat-model"
    sees_images: bool = False  # vision planners get the images they need attached

    @abc.abstractmethod
    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PlannerReply:
        """One model call over the conversation so far."""

    def close(self) -> None:  # release weights / connections
        return None


# -- stopping a model call -----------------------------------------------------------------------
# The graph's `plan` node runs the model call inside `stoppable(cancel.is_set)`; a backend that
# can stop mid-call (between generated tokens, between sleeps) checks `stop_requested()` and
# raises `tools.errors.CancelledError`. A context variable, not an attribute of the planner: one
# planner serves every session of the process, each with its own stop button.
_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("atelier_planner_stop", default=None)


@contextmanager
def stoppable(check: Callable[[], bool]) -> Iterator[None]:
    """Model calls made inside the block stop when `check()` turns true."""
    token = _STOP.set(check)
    try:
        yield
    finally:
        _STOP.reset(token)


def stop_requested() -> bool:
    """Whether the turn whose model call is running was asked to stop."""
    check = _STOP.get()
    return bool(check is not None and check())


def stop_check() -> Callable[[], bool] | None:
    """The stop check of the model call running in this context (for a backend that hands it to
    native code running outside it, e.g. llama.cpp's compute thread)."""
    return _STOP.get()
