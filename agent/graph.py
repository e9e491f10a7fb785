"""One turn of Atelier as a LangGraph `StateGraph` (DESIGN.md, "One turn, as data").

    screen_request -> plan -> screen_call -> [ask_consent] -> run_tool -> screen_result -> seal
                       ^                                                                   |
                       +------------------- (next call, or back to plan) -----------------+

The state holds OpenAI-style messages, image refs and small per-turn records; never image bytes.
Tool errors (bad arguments, unknown refs, engine failures, refusals) come back to the model as
tool messages. A call the parser could not read goes back to the model once for repair. Consent
for editing a real person's face is an `interrupt()` in its own node, before the engine runs.
Engine progress and tool steps are streamed as custom events (`get_stream_writer`), which
`agent.session` turns into `TurnEvent`s.

The services a turn needs (store, planner, screens, sealer, audit log) are bound when the graph
is built (`build_graph`); what differs per run (user id, cancel flag) is the runtime context.
"""

from __future__ import annotations

import json
import logging
import operator
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Annotated, Any, Literal, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agent.config import Profile
from agent.planners.base import ChatModel
from agent.planners.checking import repair_request
from agent.prompting import REPAIR_FLAG, say
from tools.errors import AtelierError, CancelledError, EngineError, ToolArgumentError
from tools.schemas import ToolResult, tool_json_schemas, validate_call
from tools.store import ImageStore, OwnedImages

log = logging.getLogger(__name__)

MAX_ROUNDS = 8  # planner calls per turn before the turn stops
MAX_REPAIRS = 1  # malformed replies returned to the model per turn




# -- state ---------------------------------------------------------------------------------


def _union(left: list[str] | None, right: list[str] | None) -> list[str]:
    out = list(left or [])
    out.extend(x for x in (right or []) if x not in out)
    return out


class TurnState(TypedDict, total=False):
    # kept across turns (the checkpointed conversation)
    messages: Annotated[list[dict[str, Any]], operator.add]  # OpenAI-style; user msgs may carry "images"
    current: str | None  # the image ref that is current (what "it" means)
    consented: Annotated[list[str], _union]  # person keys the user confirmed consent for
    # per turn (reset by screen_request)
    direct: bool  # slash command / call_tool: run the queued calls, no model
    queue: list[dict[str, Any]]  # tool calls waiting: {"id", "name", "args"}
    call: dict[str, Any] | None  # the call in flight
    decision: dict[str, Any] | None  # the screen's decision on it
    staged: list[dict[str, Any]]  # its staged results (staging ids, not bytes)
    result: dict[str, Any] | None  # its ToolResult as a dict
    rounds: int
    repairs: int
    answer: str
    refused: dict[str, Any] | None
    error: dict[str, Any] | None
    stopped: bool
    calls: list[dict[str, Any]]  # this turn's {"name", "args", "result"}
    images: list[str]  # refs made this turn


TURN_RESET: dict[str, Any] = {
    "queue": [], "call": None, "decision": None, "staged": [], "result": None, "rounds": 0,
    "repairs": 0, "answer": "", "refused": None, "error": None, "stopped": False, "calls": [],
    "images": [],
}


@dataclass
class TurnContext:
    """What differs per run of the graph (LangGraph runtime context; never checkpointed)."""

    user_id: str = "local"
    thread_id: str = ""  # the thread's key in the checkpointer and the store (agent.session.thread_key)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Services:
    """The components a turn uses; built once per `Atelier` (see agent.session)."""

    profile: Profile
    store: ImageStore
    planner: ChatModel
    prompt_screener: Any  # tools.safety.PromptScreener
    image_screener: Any  # tools.safety.ImageScreener
    sealer: Any  # tools.provenance.Sealer
    audit: Any  # tools.safety.AuditLog
    tools: list[dict[str, Any]] = field(default_factory=tool_json_schemas)
    analyzer: Any = None  # tools.identity.FaceAnalyzer: faces for identity checks and consent
    # screen_tool_call(screener, name, args, *, store, consented, analyzer) -> Decision; None: tools.safety's
    screen_call: Callable[..., Any] | None = None


# -- helpers ---------------------------------------------------------------------------------


def _images(services: Services, runtime: Runtime[TurnContext]) -> OwnedImages:
    """The store as this turn's user sees it: every ref of the turn resolves through this."""
    return services.store.scoped(runtime.context.user_id)


def _emit(kind: str, **data: Any) -> None:
    get_stream_writer()({"kind": kind, **data})


def _audit(services: Services, runtime: Runtime[TurnContext], event: str, **data: Any) -> None:
    ctx = runtime.context
    try:
        services.audit.record(event, user_id=ctx.user_id, thread_id=ctx.thread_id, **data)
    except Exception:  # noqa: BLE001 - the audit log must never break a turn
        log.exception("audit log write failed (%s)", event)


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return asdict(value)
    return value


def _tool_message(call: dict[str, Any], content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": content}


def _assistant_message(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": text or ""}
    if calls:
        msg["tool_calls"] = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
            for c in calls
        ]
    return msg


def _failed(state: TurnState, call: dict[str, Any], message: str, code: str = "tool_error",
            **extra: Any) -> dict[str, Any]:
    """A tool call that ended in an error: the model reads it as a tool message (a direct call,
    with no model, reports it as the turn's error)."""
    result = ToolResult(tool=call["name"], ok=False, error=message).model_dump(mode="json")
    _emit("tool_end", call_id=call["id"], name=call["name"], args=call["args"], result=result)
    update = {
        "messages": [_tool_message(call, f"ERROR: {message}")],
        "calls": [*state.get("calls", []), {"name": call["name"], "args": call["args"], "result": result}],
        "call": None, "staged": [], "result": None,
    }
    if state.get("direct"):
        update["error"] = {"code": code, "message": message}
    update.update(extra)
    return update


def planner_messages(services: Services, state: TurnState, session: str,
                     store: OwnedImages | None = None) -> list[dict[str, Any]]:
    """The messages the planner sees, built by agent.prompting (shared with the planner eval);
    `store`: the user's view of the image store (None: the local user's)."""
    from agent.prompting import build_messages

    store = store or services.store.scoped(None)
    messages = build_messages(
        history=state.get("messages", []),
        images=store.history(session),
        user_text=None,  # the history already ends with the user's message or tool results
        current=state.get("current"),
    )
    if services.planner.sees_images:
        _attach_images(store, state, messages)
    return messages


MAX_ATTACHED_IMAGES = 3


def _attach_images(store: ImageStore | OwnedImages, state: TurnState, messages: list[dict[str, Any]]) -> None:
    """Vision planners see the images they need: this turn's uploads and the current image,
    as local paths on the last user message (`image_paths`), loaded only for the model call."""
    users = [m for m in state.get("messages", []) if m.get("role") == "user" and not m.get(REPAIR_FLAG)]
    refs = list((users[-1].get("images") or []) if users else [])
    if state.get("current") and state["current"] not in refs:
        refs.append(state["current"])
    paths = [store.local_path(r) for r in refs[-MAX_ATTACHED_IMAGES:] if store.exists(r)]
    for msg in reversed(messages):
        if msg.get("role") == "user":
            msg["image_paths"] = paths
            break


def _request_text(state: TurnState) -> str:
    """This turn's request: the last user message that is not a repair exchange."""
    for m in reversed(state.get("messages") or []):
        if m.get("role") == "user" and not m.get(REPAIR_FLAG):
            return str(m.get("content") or "")
    return ""


def _next_call_or_plan(state: TurnState) -> Literal["screen_call", "plan"]:
    """After a call is done (or dropped): the next queued call, else back to the model."""
    return "screen_call" if state.get("queue") else "plan"


def _is_repeat(name: str, args: dict[str, Any], state: TurnState) -> bool:
    """A call that already succeeded this turn, or the same call re-applied to the image it made."""
    def without_image(a: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in a.items() if k != "image"}

    for done in state.get("calls", []):
        result = done.get("result") or {}
        if done["name"] != name or not result.get("ok"):
            continue
        if done["args"] == args:
            return True
        if without_image(done["args"]) == without_image(args) and args.get("image") in (result.get("images") or []):
            return True
    return False


def _summary(state: TurnState) -> str:
    parts = []
    for c in state.get("calls", []):
        result = c.get("result") or {}
        if result.get("ok", True):
            made = ", ".join(result.get("images") or []) or result.get("current") or "done"
            parts.append(f"{c['name']}: {made}")
        else:
            parts.append(f"{c['name']} failed: {result.get('error')}")
    return "; ".join(parts) or say("no_answer")


# -- the graph -----------------------------------------------------------------------------------


def build_graph(services: Services, checkpointer=None):
    """Compile the turn graph over `services` (checkpointer: any LangGraph saver)."""

    def screen_request(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        store = _images(services, runtime)
        update: dict[str, Any] = dict(TURN_RESET)
        update["direct"] = bool(state.get("direct"))
        update["queue"] = list(state.get("queue") or [])
        # this turn's user message (a slash command or direct call is followed by its tool call)
        user = next((m for m in reversed(state.get("messages") or []) if m.get("role") == "user"), {})
        text = str(user.get("content") or "")
        uploads = list(user.get("images") or [])
        _emit("status", text=say("status_screening"))
        decision = services.prompt_screener.screen(text) if text and not update["direct"] else None
        _audit(services, runtime, "request", text=text, images=uploads,
               decision=_dump(decision) if decision else None, direct=update["direct"])
        for ref in uploads:
            if decision is not None and decision.decision == "refuse":
                break
            decision = services.image_screener.screen(store.open(ref), stage="upload")
            _audit(services, runtime, "upload_screen", ref=ref, decision=_dump(decision))
        if decision is not None and decision.decision == "refuse":
            refused = {"category": decision.category, "reason": decision.reason}
            _emit("refusal", **refused)
            answer = say("refused", reason=decision.reason)
            update.update(refused=refused, answer=answer, queue=[],
                          messages=[{"role": "assistant", "content": answer}])
            return update
        if uploads:
            update["current"] = uploads[-1]
        return update

    def after_request(state: TurnState) -> Literal["plan", "screen_call", "__end__"]:
        if state.get("refused"):
            return END
        return _next_call_or_plan(state)

    def plan(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        rounds = state.get("rounds", 0)
        if state.get("direct"):
            answer = say("done_summary", summary=_summary(state))
            return {"answer": answer, "messages": [{"role": "assistant", "content": answer}]}
        if rounds >= MAX_ROUNDS:
            answer = say("too_many_rounds", rounds=rounds)
            return {"answer": answer, "messages": [{"role": "assistant", "content": answer}]}
        _emit("status", text=say("status_planning"))
        try:
            reply = services.planner.chat(
                planner_messages(services, state, runtime.context.thread_id, _images(services, runtime)),
                services.tools
            )
        except Exception as err:  # noqa: BLE001 - a planner failure ends the turn with a message
            log.exception("planner failed")
            message = str(err) or type(err).__name__
            code = err.code if isinstance(err, AtelierError) else "planner_error"
            answer = say("planner_failed", message=message)
            _audit(services, runtime, "planner_error", message=message)
            return {"answer": answer, "error": {"code": code, "message": message},
                    "messages": [{"role": "assistant", "content": answer}]}
        # the plan step's checks (agent.planners.checking): an unreadable reply, or a call that cannot
        # run as given or contradicts the request, goes back to the model once with the problems spelled
        # out; a call the model cannot fix (an edit with no image in the chat) is answered here
        versions = _images(services, runtime).history(runtime.context.thread_id)
        refs = [v.ref for v in versions]
        request = repair_request(reply, refs=refs, current=state.get("current") or (refs[-1] if refs else None),
                                 deciding=not state.get("calls"), message=_request_text(state), images=versions)
        if request is not None and request.answer is not None:  # e.g. an edit with no image: ask for one
            _audit(services, runtime, "call_problem", raw=reply.raw[:2000], problem=request.problem, repaired=False)
            return {"rounds": rounds + 1, "answer": request.answer,
                    "messages": [{"role": "assistant", "content": request.answer}]}
        if request is not None:
            kind, problem, exchange = request.kind, request.problem, request.exchange
            can_repair = state.get("repairs", 0) < MAX_REPAIRS
            _audit(services, runtime, "malformed_call" if kind == "repair" else "call_problem",
                   raw=reply.raw[:2000], problem=problem[:2000], repaired=can_repair)
            if can_repair:
                return {"rounds": rounds + 1, "repairs": state.get("repairs", 0) + 1, "messages": exchange}
            if kind == "repair":
                answer = say("repair_failed")
                return {"rounds": rounds + 1, "answer": answer,
                        "messages": [{"role": "assistant", "content": answer}]}
            # a second "Done" stays the answer (the user sees nothing changed and can say so);
            # calls that still have problems go on: screen_call's validation returns them as tool errors
        # small models repeat themselves after reading a tool result: drop the repeats
        calls = [c.as_dict() for c in reply.tool_calls if not _is_repeat(c.name, c.args, state)]
        if calls:
            return {"rounds": rounds + 1, "queue": calls,
                    "messages": [_assistant_message(reply.text, calls)]}
        answer = reply.text.strip() or say("done_summary", summary=_summary(state))
        return {"rounds": rounds + 1, "answer": answer, "messages": [{"role": "assistant", "content": answer}]}

    def after_plan(state: TurnState) -> Literal["plan", "screen_call", "__end__"]:
        if state.get("queue"):
            return "screen_call"
        if state.get("answer") or state.get("error"):
            return END
        return "plan"  # a repair request

    def screen_call(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        queue = list(state.get("queue") or [])
        call = queue.pop(0)
        _emit("tool_start", call_id=call["id"], name=call["name"], args=call["args"])
        base = {"queue": queue, "call": call, "decision": None}
        try:
            args = validate_call(call["name"], call["args"])
        except ToolArgumentError as err:
            _audit(services, runtime, "tool_call", call=call, decision=None, error=str(err))
            return {**base, **_failed(state, call, str(err), err.code)}
        if services.screen_call is None:
            from tools.safety import screen_tool_call

            services.screen_call = screen_tool_call
        decision = services.screen_call(services.prompt_screener, call["name"], args,
                                        store=_images(services, runtime),
                                        consented=list(state.get("consented") or []),
                                        analyzer=services.analyzer)
        _audit(services, runtime, "tool_call", call=call, decision=_dump(decision))
        if decision.decision == "refuse":
            refused = {"category": decision.category, "reason": decision.reason}
            _emit("refusal", **refused)
            message = say("call_refused", category=decision.category, reason=decision.reason)
            return {**base, **_failed(state, call, message.removeprefix("ERROR: "), "refused", refused=refused)}
        return {**base, "decision": _dump(decision)}

    def after_call(state: TurnState) -> Literal["ask_consent", "run_tool", "screen_call", "plan"]:
        if state.get("call") is None:  # failed or refused: next call, or back to the model
            return _next_call_or_plan(state)
        if (state.get("decision") or {}).get("decision") == "consent":
            return "ask_consent"
        return "run_tool"

    def ask_consent(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        call = state["call"]
        matched = (state.get("decision") or {}).get("matched")
        people = [matched] if isinstance(matched, str) else list(matched or [])
        from tools.safety import consent_question, person_labels

        # People named as every note names them: 1-based, left to right, with where they are.
        question = consent_question(people, person_labels(_images(services, runtime), people, services.analyzer))
        approved = interrupt({"question": question, "people": people,
                              "call": {"name": call["name"], "args": call["args"]}})
        approved = approved.get("approved") if isinstance(approved, dict) else bool(approved)
        _audit(services, runtime, "consent", call=call, people=people, approved=bool(approved))
        if approved:
            return {"consented": people}
        return _failed(state, call, say("consent_declined").removeprefix("ERROR: "), "consent_declined")

    def after_consent(state: TurnState) -> Literal["run_tool", "screen_call", "plan"]:
        if state.get("call") is None:
            return _next_call_or_plan(state)
        return "run_tool"

    def run_tool(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        from tools.image_tools import ToolContext
        from tools.image_tools import run_tool as run_image_tool

        call = state["call"]
        writer = get_stream_writer()
        cancel = runtime.context.cancel

        def progress(step: int, total: int) -> None:
            if cancel.is_set():
                raise CancelledError("stopped by the user")
            writer({"kind": "progress", "call_id": call["id"], "step": int(step), "total": int(total)})

        _emit("status", text=say("status_running", tool=call["name"]))
        ctx = ToolContext(store=_images(services, runtime), engine=services.profile.engine, identity=services.profile.identity,
                          session=runtime.context.thread_id, progress=progress, analyzer=services.analyzer,
                          profile=services.profile.name)
        try:
            if cancel.is_set():
                raise CancelledError("stopped by the user")
            outcome = run_image_tool(ctx, call["name"], call["args"])
        except CancelledError as err:
            _audit(services, runtime, "tool_error", call=call, error=str(err))
            return _failed(state, call, str(err), err.code, stopped=True, answer=say("cancelled"), queue=[])
        except AtelierError as err:
            _audit(services, runtime, "tool_error", call=call, error=str(err), code=err.code)
            return _failed(state, call, str(err), err.code)
        except Exception as err:  # noqa: BLE001 - an engine crash becomes a message, not a trace
            log.exception("tool %s crashed", call["name"])
            message = str(EngineError(f"{call['name']} failed: {type(err).__name__}: {err}"))
            _audit(services, runtime, "tool_error", call=call, error=message, code="engine_error")
            return _failed(state, call, message, "engine_error")
        result = outcome.result.model_dump(mode="json")
        staged = [_dump(s) for s in outcome.staged]
        return {"result": result, "staged": staged}

    def after_tool(state: TurnState) -> Literal["screen_result", "screen_call", "plan", "__end__"]:
        if state.get("stopped"):
            return END
        if state.get("call") is None:
            return _next_call_or_plan(state)
        return "screen_result"

    def screen_result(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        store = _images(services, runtime)
        kept, refusals = [], []
        for item in state.get("staged") or []:
            image, _ = store.load_staged(item["staging_id"])
            decision = services.image_screener.screen(image, stage="result")
            _audit(services, runtime, "result_screen", call=state["call"], decision=_dump(decision))
            if decision.decision == "refuse":
                store.discard_staged(item["staging_id"])
                refusals.append({"category": decision.category, "reason": decision.reason})
            else:
                kept.append(item)
        update: dict[str, Any] = {"staged": kept}
        if refusals:
            _emit("refusal", **refusals[0])
            update["refused"] = refusals[0]
            if not kept:
                message = say("result_refused", **refusals[0]).removeprefix("ERROR: ")
                return {**update, **_failed(state, state["call"], message, "refused")}
            result = dict(state["result"])
            result["note"] = "; ".join(filter(None, [result.get("note"),
                                                     f"{len(refusals)} result(s) withheld by the safety check"]))
            update["result"] = result
        return update

    def after_result(state: TurnState) -> Literal["seal", "screen_call", "plan"]:
        if state.get("call") is None:  # every result withheld
            return _next_call_or_plan(state)
        return "seal"

    def seal(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
        store = _images(services, runtime)
        call = state["call"]
        result = dict(state["result"] or {})
        new_refs, watermarks = [], []
        for item in state.get("staged") or []:
            image, _ = store.load_staged(item["staging_id"])
            parent = item.get("parent")
            edited = item.get("origin") == "edited"
            sealed = services.sealer.seal(
                image,
                action="edited" if edited else "created",
                source_type=_source_type(call["name"], edited),
                parent=store.read_bytes(parent) if parent else None,
                tool_call=item.get("tool_call") or {"name": call["name"], "args": call["args"]},
            )
            metadata = dict(item.get("metadata") or {})
            metadata.update(watermark_id=sealed.watermark_id, source_refs=item.get("source_refs") or [])
            version = store.put(sealed.data, parent=parent, session=runtime.context.thread_id,
                                origin=item.get("origin") or "generated",
                                tool_call=item.get("tool_call") or {"name": call["name"], "args": call["args"]},
                                metadata=metadata)
            store.discard_staged(item["staging_id"])
            new_refs.append(version.ref)
            watermarks.append(sealed.watermark_id)
            _audit(services, runtime, "image", ref=version.ref, parent=parent, call=call,
                   watermark_id=sealed.watermark_id)
            _emit("image", ref=version.ref, path=store.local_path(version.ref),
                  width=version.width, height=version.height)
        if new_refs:  # the staged results became these versions (revert stages nothing)
            result.update(images=new_refs, watermark_ids=watermarks, current=new_refs[-1])
        current = result.get("current") or state.get("current")
        content = ToolResult.model_validate(result).for_model()
        _emit("tool_end", call_id=call["id"], name=call["name"], args=call["args"], result=result)
        return {
            "messages": [_tool_message(call, content)],
            "current": current,
            "images": [*state.get("images", []), *new_refs],
            "calls": [*state.get("calls", []), {"name": call["name"], "args": call["args"], "result": result}],
            "call": None, "staged": [], "result": None, "decision": None,
        }

    graph = StateGraph(TurnState, context_schema=TurnContext)
    graph.add_node("screen_request", screen_request)
    graph.add_node("plan", plan)
    graph.add_node("screen_call", screen_call)
    graph.add_node("ask_consent", ask_consent)
    graph.add_node("run_tool", run_tool)
    graph.add_node("screen_result", screen_result)
    graph.add_node("seal", seal)
    graph.add_edge(START, "screen_request")
    graph.add_conditional_edges("screen_request", after_request)
    graph.add_conditional_edges("plan", after_plan)
    graph.add_conditional_edges("screen_call", after_call)
    graph.add_conditional_edges("ask_consent", after_consent)
    graph.add_conditional_edges("run_tool", after_tool)
    graph.add_conditional_edges("screen_result", after_result)
    graph.add_conditional_edges("seal", _next_call_or_plan)
    return graph.compile(checkpointer=checkpointer)


def _source_type(tool: str, edited: bool) -> str:
    """IPTC digital source type of a result (C2PA `digitalSourceType`)."""
    if tool == "adjust_image":
        return "algorithmicMedia"  # exact photo adjustments of a generated image, no generative model
    return "compositeWithTrainedAlgorithmicMedia" if edited else "trainedAlgorithmicMedia"
