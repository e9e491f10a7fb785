"""One turn as data: what the graph holds, what it streams and what it returns (DESIGN.md, "One
turn, as data"). The graph (`agent.graph`), the session (`agent.session`) and every surface (the
Chainlit app, the HTTP API, MCP, the CLI) share these models; nothing reads a turn with
`.get(...) or {}` chains.

- `PendingCall`: a tool call waiting or in flight, in the contract's terms (`TOOLS.md`): the
  planner's words are translated (`agent.intents`) and its images resolved (`agent.resolver`)
  before a call becomes one.
- `Screening`: the safety screen's decision on a request, an upload, a call or a result.
- `Staged`: a result the engine staged (a staging id, never bytes) before it is screened and sealed.
- `CallRecord`: a finished call with its `ToolResult`.
- `Refusal`, `TurnError`, `OutputImage`, `PersonFace`, `ConsentQuestion`, `Followup`, `TurnResult`.
- `VersionEntry`: one version of the chat as a Versions list shows it.
- `TurnEvent`: a discriminated union (`kind`) of the steps a turn streams.

The checkpoint holds these as JSON (`model_dump(mode="json")`): a thread saved by one version of
Atelier reads in another, and no serializer has to import our classes.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from tools.image_tools import StagedImage
from tools.schemas import ToolResult


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


class PendingCall(_Model):
    """A tool call in the contract's terms; `said` keeps what the planner wrote (its own words),
    for the audit log and the transcript."""

    id: str = Field(default_factory=new_call_id)
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    said: dict[str, Any] | None = None


class Screening(_Model):
    """A safety decision (`tools.safety.Decision` as data)."""

    decision: Literal["allow", "consent", "refuse"] = "allow"
    category: str = "none"
    reason: str = ""
    matched: str | list[str] | None = None
    guard: dict[str, Any] | None = None  # the guard model's verdict (label, probabilities, ms) when asked

    @classmethod
    def of(cls, decision: Any) -> Screening:
        if isinstance(decision, Screening):
            return decision
        if hasattr(decision, "model_dump"):
            return cls.model_validate(decision.model_dump(mode="json"))
        return cls.model_validate(decision)

    @property
    def people(self) -> list[str]:
        if isinstance(self.matched, str):
            return [self.matched]
        return list(self.matched or [])


# a staged engine result (a staging id, never bytes): the tools' own model
Staged = StagedImage


class CallRecord(_Model):
    """A finished call: what ran and what came of it."""

    id: str = ""
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    result: ToolResult
    code: str | None = None  # why it failed ("refused", "consent_declined", "engine_error", ...)


class Refusal(_Model):
    category: str = "none"
    reason: str = ""


class TurnError(_Model):
    code: str = "error"
    message: str = ""
    http_status: int | None = None


class OutputImage(_Model):
    ref: str
    path: str = ""
    width: int = 0
    height: int = 0
    number: int | None = None  # its number in the chat ("#3"), as every list and answer names it
    line: str = ""  # the compact line a surface shows under it (agent.answers.result_line)


class PersonFace(_Model):
    """One person a consent question is about: the key consent is recorded under, how every note
    names them ("face 2 (the person on the right)"), and where the face is, for a crop."""

    key: str
    label: str
    ref: str | None = None
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) in `ref`


class ConsentQuestion(_Model):
    question: str
    people: list[str] = Field(default_factory=list)
    call: dict[str, Any] = Field(default_factory=dict)  # {"name", "args"} of the call that waits
    faces: list[PersonFace] = Field(default_factory=list)  # `people` as people, in the same order


class Followup(_Model):
    """A next step a surface offers as a button under a result whose face check failed: the same
    call again (`retry`, a new seed), or back to the image it started from (`back`)."""

    kind: Literal["retry", "back"]
    label: str
    call: dict[str, Any] = Field(default_factory=dict)  # retry: {"name", "args"}
    ref: str | None = None  # back: the version to return to


class VersionEntry(_Model):
    """One version of a chat as the Versions list shows it: its number, what made it in words
    ("relit: warm light from the left"), the number of the version it came from."""

    ref: str
    number: int
    made: str
    parent: str | None = None
    parent_number: int | None = None
    current: bool = False


class Usage(_Model):
    """Planner tokens of a turn, as the model counted them (0 for a turn with no model call)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


class TurnResult(_Model):
    """What one turn produced."""

    thread_id: str
    answer: str = ""
    tool_calls: list[CallRecord] = Field(default_factory=list)
    images: list[OutputImage] = Field(default_factory=list)
    consent: ConsentQuestion | None = None  # the question the turn waits on
    refused: Refusal | None = None
    error: TurnError | None = None
    planner_calls: int = 0  # model calls this turn made (a turn whose calls all succeed makes one)
    usage: Usage = Field(default_factory=lambda: Usage())  # the tokens those calls cost
    followups: list[Followup] = Field(default_factory=list)  # buttons for a result whose faces failed


# -- events ------------------------------------------------------------------------------------


class _Event(_Model):
    @property
    def data(self) -> dict[str, Any]:
        """The event's fields without `kind` (what a surface serialises)."""
        return self.model_dump(exclude={"kind"})


class StatusEvent(_Event):
    kind: Literal["status"] = "status"
    text: str
    progress: float | None = None  # 0-1 when the status is long work with a known end


class ToolStartEvent(_Event):
    kind: Literal["tool_start"] = "tool_start"
    call_id: str
    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class ProgressEvent(_Event):
    kind: Literal["progress"] = "progress"
    call_id: str
    step: int
    total: int


class ToolEndEvent(_Event):
    kind: Literal["tool_end"] = "tool_end"
    call_id: str
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    result: ToolResult


class ImageEvent(_Event):
    kind: Literal["image"] = "image"
    ref: str
    path: str
    width: int
    height: int


class ConsentEvent(_Event):
    kind: Literal["consent"] = "consent"
    question: str
    people: list[str] = Field(default_factory=list)
    call: dict[str, Any] = Field(default_factory=dict)
    faces: list[PersonFace] = Field(default_factory=list)


class RefusalEvent(_Event):
    kind: Literal["refusal"] = "refusal"
    category: str = "none"
    reason: str = ""


class AnswerEvent(_Event):
    kind: Literal["answer"] = "answer"
    text: str


class ErrorEvent(_Event):
    kind: Literal["error"] = "error"
    code: str = "error"
    message: str = ""
    http_status: int | None = None


class DoneEvent(_Event):
    kind: Literal["done"] = "done"
    result: TurnResult


TurnEvent = Annotated[
    Union[StatusEvent, ToolStartEvent, ProgressEvent, ToolEndEvent, ImageEvent, ConsentEvent, RefusalEvent,
          AnswerEvent, ErrorEvent, DoneEvent],
    Field(discriminator="kind"),
]
EVENTS: TypeAdapter[Any] = TypeAdapter(TurnEvent)
EventKind = Literal["status", "tool_start", "progress", "tool_end", "image", "consent", "refusal", "answer",
                    "error", "done"]


def event(kind: str, **data: Any) -> Any:
    """A `TurnEvent` from its kind and fields (validated)."""
    return EVENTS.validate_python({"kind": kind, **data})
