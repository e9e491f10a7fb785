"""One turn of Atelier as a LangGraph `StateGraph` (DESIGN.md, "One turn, as data").

    screen_request -> plan -> screen_call -> [ask_consent] -> run_tool -> screen_result -> seal
                       ^  |        ^                                                       |
                 repair +--+       +--------------------- next queued call ----------------+
                                                                       (none left) -> answer

- `screen_request` screens the message and this turn's uploads; a photo sent with the message
  becomes the current image.
- `plan` asks the model once: its reply goes through the plan step (`agent.planners.checking`:
  its words become contract calls, its images are resolved by the conversation's facts); an
  unreadable or invalid call goes back once to be fixed, anything else that cannot run is
  answered in plain words. A slash command or direct call skips the model.
- `screen_call`, `ask_consent` (an `interrupt()`), `run_tool`, `screen_result`, `seal` run each
  queued call; a failure is recorded and the next call goes on.
- `answer` composes the turn's answer from its results (`agent.answers`): no second model call.

The state (`TurnState`, pydantic) holds OpenAI-style messages, refs and the turn's records as
JSON (the models of `agent.turn`), never image bytes. Nodes are plain functions of the state and
`Runtime[TurnContext]`; the services a turn uses (store, planner, screens, sealer, audit log)
come in the runtime context, so each node can be called alone. Engine progress and tool steps
are streamed as `TurnEvent`s (`get_stream_writer`), which `agent.session` passes on.
"""

from __future__ import annotations

import json
import logging
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, Field

from agent.answers import compose
from agent.config import Profile
from agent.planners.base import ChatModel, stoppable
from agent.planners.checking import plan_step
from agent.prompting import REPAIR_FLAG, say
from agent.resolver import Facts
from agent.turn import (CallRecord, PendingCall, Refusal, Screening, Staged, TurnError, event)
from tools.errors import AtelierError, CancelledError, EngineError, ToolArgumentError
from tools.schemas import ToolResult, validate_call
from tools.store import ImageStore, OwnedImages

if TYPE_CHECKING:
    from tools.identity import FaceAnalyzer
    from tools.provenance import Sealer
    from tools.safety import AuditLog, ImageScreener, PromptScreener

log = logging.getLogger(__name__)

MAX_REPAIRS = 1  # replies sent back to the model per turn


# -- state ---------------------------------------------------------------------------------


def _union(left: list[str] | None, right: list[str] | None) -> list[str]:
    out = list(left or [])
    out.extend(x for x in (right or []) if x not in out)
    return out


class TurnState(BaseModel):
    """The checkpointed state of a thread: the conversation, and the records of its latest turn."""

    # kept across turns
    messages: Annotated[list[dict[str, Any]], operator.add] = Field(default_factory=list)
    current: str | None = None  # the image ref that is current (what "it" means)
    consented: Annotated[list[str], _union] = Field(default_factory=list)  # person keys confirmed
    # per turn (reset by screen_request)
    direct: bool = False  # slash command / call_tool: run the queued calls, no model
    attached: list[str] = Field(default_factory=list)  # refs sent with this message
    queue: list[PendingCall] = Field(default_factory=list)
    call: PendingCall | None = None  # the call in flight
    decision: Screening | None = None  # the screen's decision on it
    approved: str | None = None  # id of the call whose consent question the user approved
    staged: list[Staged] = Field(default_factory=list)
    result: ToolResult | None = None
    repairs: int = 0
    planner_calls: int = 0
    prompt_tokens: int = 0  # what this turn's model calls cost, as the planner counted them
    completion_tokens: int = 0
    answer: str = ""
    refused: Refusal | None = None
    error: TurnError | None = None
    stopped: bool = False
    withheld: int = 0
    calls: list[CallRecord] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)  # refs made this turn


def _j(value: Any) -> Any:
    """A model (or a list of them) as the JSON the checkpoint holds."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_j(v) for v in value]
    return value


TURN_RESET: dict[str, Any] = {
    "queue": [], "call": None, "decision": None, "approved": None, "staged": [], "result": None, "repairs": 0,
    "planner_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "answer": "", "refused": None, "error": None, "stopped": False, "withheld": 0,
    "calls": [], "images": [], "attached": [],
}


@dataclass
class Services:
    """The components a turn uses; built once per `Atelier` (see agent.session)."""

    profile: Profile
    store: ImageStore
    planner: ChatModel
    prompt_screener: PromptScreener
    image_screener: ImageScreener
    sealer: Sealer
    audit: AuditLog
    analyzer: FaceAnalyzer | None = None  # faces for identity checks and consent
    tools: list[dict[str, Any]] = field(default_factory=lambda: _plan_tools())  # what the planner sees
    # (screener, name, args, *, store, consented, analyzer, context) -> Decision; None: tools.safety's
    screen_call: Callable[..., Any] | None = None


def _plan_tools() -> list[dict[str, Any]]:
    from agent.intents import plan_json_schemas

    return plan_json_schemas()


@dataclass
class TurnContext:
    """What a run of the graph needs besides its state (LangGraph runtime context; never
    checkpointed): the services, who is talking, the thread's key, the stop flag."""

    services: Services | None = None
    user_id: str = "local"
    thread_id: str = ""  # the thread's key in the checkpointer and the store (agent.session.thread_key)
    cancel: threading.Event = field(default_factory=threading.Event)


# -- helpers ---------------------------------------------------------------------------------


def _services(runtime: Runtime[TurnContext]) -> Services:
    services = runtime.context.services
    if services is None:
        raise AtelierError("the turn graph was run without its services (TurnContext.services)")
    return services


def _images(runtime: Runtime[TurnContext]) -> OwnedImages:
    """The store as this turn's user sees it: every ref of the turn resolves through this."""
    return _services(runtime).store.scoped(runtime.context.user_id)


def facts_of(state: TurnState, runtime: Runtime[TurnContext]) -> Facts:
    """The conversation's facts the plan step and the answer use (agent.resolver)."""
    return Facts.of(_images(runtime).history(runtime.context.thread_id), state.current, state.attached)


def _emit(runtime: Runtime[TurnContext], kind: str, **data: Any) -> None:
    """Stream one `TurnEvent` (the runtime's writer: a node called alone gets its own)."""
    runtime.stream_writer(event(kind, **data))


def _audit(runtime: Runtime[TurnContext], name: str, **data: Any) -> None:
    ctx = runtime.context
    try:
        _services(runtime).audit.record(name, user_id=ctx.user_id, thread_id=ctx.thread_id, **data)
    except Exception:  # noqa: BLE001 - the audit log must never break a turn
        log.exception("audit log write failed (%s)", name)


def screen_context(state: TurnState, runtime: Runtime[TurnContext], *, earlier_only: bool = True) -> Any:
    """What the guard reads besides a text: the user's earlier messages of this thread (a request
    split over turns is judged whole) and what made the image on screen (its edit chain's prompts
    and instructions)."""
    from tools.safety import ScreenContext
    from tools.safety.tool_calls import image_history

    users = [str(m.get("content") or "") for m in state.messages if m.get("role") == "user"]
    if earlier_only and users:
        users = users[:-1]
    chain = image_history(_images(runtime), state.current) if state.current else []
    return ScreenContext(thread=[u for u in users if u.strip()], chain=chain)


def _tool_message(call: PendingCall, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content}


def assistant_message(text: str, calls: list[PendingCall] = ()) -> dict[str, Any]:
    """An assistant message of the conversation (the one builder: graph and session use it)."""
    msg: dict[str, Any] = {"role": "assistant", "content": text or ""}
    if calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.args, ensure_ascii=False)}}
            for c in calls
        ]
    return msg


def _failed(runtime: Runtime[TurnContext], state: TurnState, call: PendingCall, message: str,
            code: str = "tool_error", **extra: Any) -> dict[str, Any]:
    """A call that ended in an error: recorded, and the turn goes on with the next call."""
    result = ToolResult(tool=call.name, ok=False, error=message)
    _emit(runtime, "tool_end", call_id=call.id, name=call.name, args=call.args, result=result)
    update: dict[str, Any] = {
        "messages": [_tool_message(call, result.for_model())],
        "calls": _j([*state.calls, CallRecord(id=call.id, name=call.name, args=call.args, result=result, code=code)]),
        "call": None, "staged": [], "result": None, "decision": None,
    }
    if state.direct:
        update["error"] = {"code": code, "message": message}
    update.update(extra)
    return update


def planner_messages(state: TurnState, runtime: Runtime[TurnContext]) -> list[dict[str, Any]]:
    """The messages the planner sees, built by agent.prompting (shared with the planner eval)."""
    from agent.prompting import build_messages

    store = _images(runtime)
    messages = build_messages(history=state.messages, images=store.history(runtime.context.thread_id),
                              user_text=None, current=state.current, attached=state.attached)
    if _services(runtime).planner.sees_images:
        _attach_images(store, state, messages)
    return messages


MAX_ATTACHED_IMAGES = 3


def _attach_images(store: OwnedImages, state: TurnState, messages: list[dict[str, Any]]) -> None:
    """Vision planners see the images they need: this turn's uploads and the current image,
    as local paths on the last user message (`image_paths`), loaded only for the model call."""
    refs = list(state.attached)
    if state.current and state.current not in refs:
        refs.append(state.current)
    paths = [store.local_path(r) for r in refs[-MAX_ATTACHED_IMAGES:] if store.exists(r)]
    for msg in reversed(messages):
        if msg.get("role") == "user":
            msg["image_paths"] = paths
            break


def _next(state: TurnState) -> Literal["screen_call", "answer"]:
    """After a call is done (or dropped): the next queued call, else the answer."""
    return "screen_call" if state.queue else "answer"


# -- nodes -------------------------------------------------------------------------------------


def screen_request(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Screen this turn's message and uploads; reset the turn's records."""
    services, store = _services(runtime), _images(runtime)
    update: dict[str, Any] = dict(TURN_RESET)
    update["direct"] = state.direct
    update["queue"] = _j(state.queue)
    user = next((m for m in reversed(state.messages) if m.get("role") == "user"), {})
    text = str(user.get("content") or "")
    uploads = [r for r in user.get("images") or [] if isinstance(r, str)]
    update["attached"] = uploads
    _emit(runtime, "status", text=say("status_screening"))
    decision = (services.prompt_screener.screen(text, screen_context(state, runtime))
                if text and not state.direct else None)
    _audit(runtime, "request", text=text, images=uploads,
           decision=Screening.of(decision).model_dump() if decision else None, direct=state.direct)
    for ref in uploads:
        if decision is not None and decision.decision == "refuse":
            break
        decision = services.image_screener.screen(store.open(ref))
        _audit(runtime, "upload_screen", ref=ref, decision=Screening.of(decision).model_dump())
    if decision is not None and decision.decision == "refuse":
        refused = Refusal(category=decision.category, reason=decision.reason)
        _emit(runtime, "refusal", **refused.model_dump())
        answer = say("refused", reason=decision.reason)
        update.update(refused=refused.model_dump(), answer=answer, queue=[],
                      messages=[assistant_message(answer)])
        return update
    if uploads:
        update["current"] = uploads[-1]
    return update


def after_request(state: TurnState) -> Literal["plan", "screen_call", "__end__"]:
    if state.refused:
        return END
    return "screen_call" if state.queue else "plan"


def plan(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """One model call, through the plan step: calls to run, a repair round, or an answer."""
    services = _services(runtime)
    if state.direct:  # a slash command whose calls all ran: nothing to plan
        return {}
    _emit(runtime, "status", text=say("status_planning"))
    planner = services.planner
    cancel = runtime.context.cancel
    if hasattr(planner, "on_status"):  # a first run's prompt preparation shows as progress
        planner.on_status = lambda text, progress=None: _emit(runtime, "status", text=text, progress=progress)
    stopped = {"stopped": True, "queue": [], "planner_calls": state.planner_calls + 1}
    try:
        if cancel.is_set():
            return {**stopped, "planner_calls": state.planner_calls}
        with stoppable(cancel.is_set):  # the stop button ends the model call at its next token
            reply = planner.chat(planner_messages(state, runtime), services.tools)
    except CancelledError:
        _audit(runtime, "planner_stopped")
        return stopped
    except Exception as err:  # noqa: BLE001 - a planner failure ends the turn with a message
        log.exception("planner failed")
        message = str(err) or type(err).__name__
        code = err.code if isinstance(err, AtelierError) else "planner_error"
        answer = say("planner_failed", message=message)
        _audit(runtime, "planner_error", message=message)
        return {"answer": answer, "error": {"code": code, "message": message}, "planner_calls": state.planner_calls + 1,
                "messages": [assistant_message(answer)]}
    finally:
        if hasattr(planner, "on_status"):
            planner.on_status = None
    if cancel.is_set():  # stopped while the model answered: nothing it planned runs
        _audit(runtime, "planner_stopped")
        return stopped
    step = plan_step(reply, facts_of(state, runtime), deciding=not state.calls,
                     can_repair=state.repairs < MAX_REPAIRS)
    counted = {"planner_calls": state.planner_calls + 1,
               "prompt_tokens": state.prompt_tokens + int(reply.usage.get("prompt_tokens", 0)),
               "completion_tokens": state.completion_tokens + int(reply.usage.get("completion_tokens", 0))}
    if step.kind:
        _audit(runtime, "malformed_call" if step.kind == "repair" else "call_problem", raw=reply.raw[:2000],
               problem=step.problem[:2000], repaired=step.repairs)
    if step.repairs:
        return {**counted, "repairs": state.repairs + 1, "messages": step.exchange}
    if step.calls:
        return {**counted, "queue": _j(step.calls), "messages": [assistant_message(reply.text, step.calls)]}
    answer = step.answer or say("no_answer")
    return {**counted, "answer": answer, "messages": [assistant_message(answer)]}


def after_plan(state: TurnState) -> Literal["plan", "screen_call", "answer", "__end__"]:
    if state.stopped:
        return "answer"
    if state.queue:
        return "screen_call"
    if state.direct:
        return "answer"
    if state.answer or state.error:
        return END
    return "plan"  # a repair round


def screen_call(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Validate the next queued call and screen it (refuse, ask for consent, or allow)."""
    services = _services(runtime)
    queue = list(state.queue)
    call = queue.pop(0)
    if state.calls and call.said is not None and call.name != "generate_image" and not call.said.get("image") \
            and state.current:
        # a later call of one reply that named no image works on what the call before it made
        call = call.model_copy(update={"args": {**call.args, "image": state.current}})
    _emit(runtime, "tool_start", call_id=call.id, name=call.name, args=call.args)
    base = {"queue": _j(queue), "call": _j(call), "decision": None}
    try:
        args = validate_call(call.name, call.args)
    except ToolArgumentError as err:
        _audit(runtime, "tool_call", call=_j(call), decision=None, error=str(err))
        return {**base, **_failed(runtime, state, call, str(err), err.code)}
    if services.screen_call is None:
        from tools.safety import screen_tool_call

        services.screen_call = screen_tool_call
    decision = Screening.of(services.screen_call(services.prompt_screener, call.name, args, store=_images(runtime),
                                                 consented=list(state.consented), analyzer=services.analyzer,
                                                 context=screen_context(state, runtime, earlier_only=False)))
    _audit(runtime, "tool_call", call=_j(call), decision=decision.model_dump())
    if decision.decision == "refuse":
        refused = Refusal(category=decision.category, reason=decision.reason)
        _emit(runtime, "refusal", **refused.model_dump())
        message = say("call_refused", category=decision.category, reason=decision.reason)
        return {**base, **_failed(runtime, state, call, message, "refused", refused=refused.model_dump())}
    return {**base, "decision": decision.model_dump()}


def after_call(state: TurnState) -> Literal["ask_consent", "run_tool", "screen_call", "answer"]:
    if state.call is None:  # failed or refused: the next call, or the answer
        return _next(state)
    if state.decision is not None and state.decision.decision == "consent":
        return "ask_consent"
    return "run_tool"


def ask_consent(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Ask the user (an interrupt) before an edit of a real person's face."""
    services = _services(runtime)
    call = state.call
    people = state.decision.people if state.decision else []
    from tools.safety import consent_question, person_faces

    # People named as every note names them: 1-based, left to right, with where they are (and
    # their face boxes, so a surface can show each face).
    faces = person_faces(_images(runtime), people, services.analyzer)
    question = consent_question(people, [face["label"] for face in faces])
    approved = interrupt({"question": question, "people": people, "call": {"name": call.name, "args": call.args},
                          "faces": faces})
    approved = approved.get("approved") if isinstance(approved, dict) else bool(approved)
    _audit(runtime, "consent", call=_j(call), people=people, approved=bool(approved))
    if approved:
        return {"consented": people, "approved": call.id}
    return _failed(runtime, state, call, say("consent_declined"), "consent_declined")


def after_consent(state: TurnState) -> Literal["run_tool", "screen_call", "answer"]:
    return "run_tool" if state.call is not None else _next(state)


def run_tool(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Run the call's engine; its results are staged (not stored) until screened and sealed."""
    from tools.image_tools import ToolContext
    from tools.image_tools import run_tool as run_image_tool

    services = _services(runtime)
    call = state.call
    writer = runtime.stream_writer
    cancel = runtime.context.cancel

    def progress(step: int, total: int) -> None:
        if cancel.is_set():
            raise CancelledError("stopped by the user")
        writer(event("progress", call_id=call.id, step=int(step), total=int(total)))

    _emit(runtime, "status", text=say("status_running", tool=call.name))
    ctx = ToolContext(store=_images(runtime), engine=services.profile.engine, identity=services.profile.identity,
                      session=runtime.context.thread_id, progress=progress, analyzer=services.analyzer,
                      profile=services.profile.name)
    try:
        if cancel.is_set():
            raise CancelledError("stopped by the user")
        outcome = run_image_tool(ctx, call.name, call.args)
    except CancelledError as err:
        _audit(runtime, "tool_error", call=_j(call), error=str(err))
        return _failed(runtime, state, call, str(err), err.code, stopped=True, queue=[])
    except AtelierError as err:
        _audit(runtime, "tool_error", call=_j(call), error=str(err), code=err.code)
        return _failed(runtime, state, call, str(err), err.code)
    except Exception as err:  # noqa: BLE001 - an engine crash becomes a message, not a trace
        log.exception("tool %s crashed", call.name)
        message = str(EngineError(f"{call.name} failed: {type(err).__name__}: {err}"))
        _audit(runtime, "tool_error", call=_j(call), error=message, code="engine_error")
        return _failed(runtime, state, call, message, "engine_error")
    return {"result": _j(outcome.result), "staged": _j(list(outcome.staged))}


def after_tool(state: TurnState) -> Literal["screen_result", "screen_call", "answer"]:
    if state.stopped:
        return "answer"
    if state.call is None:
        return _next(state)
    return "screen_result"


def screen_result(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Screen every staged result; a refused one is discarded."""
    services, store = _services(runtime), _images(runtime)
    kept, refusals = [], []
    for item in state.staged:
        image, _ = store.load_staged(item.staging_id)
        decision = services.image_screener.screen(image)
        _audit(runtime, "result_screen", call=_j(state.call), decision=Screening.of(decision).model_dump())
        if decision.decision == "refuse":
            store.discard_staged(item.staging_id)
            refusals.append(Refusal(category=decision.category, reason=decision.reason))
        else:
            kept.append(item)
    update: dict[str, Any] = {"staged": _j(kept)}
    if refusals:
        _emit(runtime, "refusal", **refusals[0].model_dump())
        update["refused"] = refusals[0].model_dump()
        update["withheld"] = state.withheld + len(refusals)
        if not kept:
            message = say("result_refused", **refusals[0].model_dump())
            return {**update, **_failed(runtime, state, state.call, message, "refused")}
    return update


def after_result(state: TurnState) -> Literal["seal", "screen_call", "answer"]:
    return "seal" if state.call is not None else _next(state)


def seal(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """Watermark and sign every kept result and store it as a new version."""
    services, store = _services(runtime), _images(runtime)
    call = state.call
    result = state.result.model_copy() if state.result else ToolResult(tool=call.name)
    new_refs, watermarks = [], []
    for item in state.staged:
        image, _ = store.load_staged(item.staging_id)
        parent = item.parent
        edited = item.origin == "edited"
        tool_call = item.tool_call or {"name": call.name, "args": call.args}
        specific = exact_actions(call.name, tool_call.get("args") or call.args)
        ai_generated = specific is None or _ai_lineage(store, parent)
        sealed = services.sealer.seal(
            image, action="edited" if edited else "created", source_type=_source_type(call.name, edited),
            parent=store.read_bytes(parent) if parent else None, tool_call=tool_call,
            specific=specific, ai_generated=ai_generated,
        )
        metadata = dict(item.metadata)
        metadata.update(watermark_id=sealed.watermark_id, source_refs=item.source_refs, ai_generated=ai_generated)
        version = store.put(sealed.data, parent=parent, session=runtime.context.thread_id, origin=item.origin,
                            tool_call=tool_call, metadata=metadata)
        store.discard_staged(item.staging_id)
        new_refs.append(version.ref)
        watermarks.append(sealed.watermark_id)
        _audit(runtime, "image", ref=version.ref, parent=parent, call=_j(call), watermark_id=sealed.watermark_id)
        _emit(runtime, "image", ref=version.ref, path=store.local_path(version.ref), width=version.width, height=version.height)
    if new_refs:  # the staged results became these versions (revert stages nothing)
        result = result.model_copy(update={"images": new_refs, "watermark_ids": watermarks, "current": new_refs[-1]})
    if state.withheld and new_refs:
        note = "; ".join(filter(None, [result.note, f"{state.withheld} result(s) withheld by the safety check"]))
        result = result.model_copy(update={"note": note})
    current = result.current or state.current
    _emit(runtime, "tool_end", call_id=call.id, name=call.name, args=call.args, result=result)
    return {
        "messages": [_tool_message(call, result.for_model())],
        "current": current,
        "images": [*state.images, *new_refs],
        "calls": _j([*state.calls, CallRecord(id=call.id, name=call.name, args=call.args, result=result)]),
        "call": None, "staged": [], "result": None, "decision": None,
    }


def answer(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    """The turn's answer from its results (agent.answers): no model call."""
    text = compose(state.calls, facts_of(state, runtime), withheld=state.withheld if not state.calls else 0,
                   stopped=state.stopped)
    return {"answer": text, "messages": [assistant_message(text)]}


def build_graph(checkpointer=None):
    """Compile the turn graph (checkpointer: any LangGraph saver). Its services come with each
    run, in `TurnContext`."""
    graph = StateGraph(TurnState, context_schema=TurnContext)
    for node in (screen_request, plan, screen_call, ask_consent, run_tool, screen_result, seal, answer):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "screen_request")
    graph.add_conditional_edges("screen_request", after_request)
    graph.add_conditional_edges("plan", after_plan)
    graph.add_conditional_edges("screen_call", after_call)
    graph.add_conditional_edges("ask_consent", after_consent)
    graph.add_conditional_edges("run_tool", after_tool)
    graph.add_conditional_edges("screen_result", after_result)
    graph.add_conditional_edges("seal", _next)
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


# The C2PA action of each argument of an exact adjustment (adjust_image: no generative model).
EXACT_ACTIONS = {"exposure_ev": "c2pa.color_adjustments", "white_balance_k": "c2pa.color_adjustments",
                 "contrast": "c2pa.color_adjustments", "saturation": "c2pa.color_adjustments",
                 "rotate_deg": "c2pa.orientation", "crop": "c2pa.cropped"}


def exact_actions(tool: str, args: dict[str, Any]) -> list[str] | None:
    """The specific C2PA actions of a non-generative call (None for a generative one)."""
    if tool != "adjust_image":
        return None
    return list(dict.fromkeys(EXACT_ACTIONS[k] for k in EXACT_ACTIONS if args.get(k) is not None)) or ["c2pa.edited"]


def _ai_lineage(store, ref: str | None) -> bool:
    """Whether a generative model made any pixels of `ref` (its own flag, set when it was sealed;
    an upload has none: a photo; older versions without the flag count as generated)."""
    if ref is None:
        return True
    version = store.get(ref)
    if "ai_generated" in version.metadata:
        return bool(version.metadata["ai_generated"])
    return version.origin != "upload"


def _source_type(tool: str, edited: bool) -> str:
    """IPTC digital source type of a result (C2PA `digitalSourceType`)."""
    if tool == "adjust_image":
        return "algorithmicMedia"  # exact photo adjustments of a generated image, no generative model
    return "compositeWithTrainedAlgorithmicMedia" if edited else "trainedAlgorithmicMedia"
