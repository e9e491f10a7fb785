"""Chainlit callbacks of the Atelier chat (run by `atelier ui`; see `ui/chat_app/__init__.py`).

A thin adapter: every turn goes through the agent's Session API (`session.astream`), and each
`TurnEvent` becomes something a person sees: a `cl.Step` per tool call (arguments, progress,
result and checks), a consent question with buttons, a refusal as a short explanation, the
answer with its images inline. Threads persist through the SQLAlchemy data layer on SQLite with
element files on local disk (`data_layer.py`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import chainlit as cl
from chainlit.config import config as cl_config
from chainlit.context import local_steps
from chainlit.input_widget import NumberInput, Slider
from chainlit.server import app as fastapi_app
from chainlit.utils import utc_now

from agent.config import load_profile
from agent.turn import (AnswerEvent, ConsentEvent, ConsentQuestion, DoneEvent, ErrorEvent, ImageEvent, OutputImage,
                        ProgressEvent, Refusal, RefusalEvent, StatusEvent, ToolEndEvent, ToolStartEvent, TurnError,
                        TurnEvent, TurnResult)
from tools.errors import AtelierError, RateLimitedError
from ui.chat_app import ENV_OVERRIDES, ENV_PASSWORD, ENV_PROFILE, ENV_USERNAME, ui_root
from ui.chat_app import render
from ui.chat_app.data_layer import LocalStorageClient, build_data_layer, install_file_route

if TYPE_CHECKING:
    from agent.session import NamedImage

log = logging.getLogger("atelier.chat")

PROFILE = load_profile(os.environ.get(ENV_PROFILE), json.loads(os.environ.get(ENV_OVERRIDES) or "{}"))
BASE_OVERRIDES: dict[str, Any] = json.loads(os.environ.get(ENV_OVERRIDES) or "{}")
APP_DIR = ui_root(PROFILE.store.root)
DB_PATH = APP_DIR / "threads.sqlite"
FILES_DIR = APP_DIR / "files"
TEXTS = render.texts()
LOCAL_USER = "local"
PROGRESS_INTERVAL_S = 0.25  # at most four progress updates a second per step (each is persisted)


# -- Chainlit configuration (the generated config.toml holds Chainlit's defaults) -------------
def configure_chainlit() -> None:
    cl_config.ui.name = "Atelier"
    cl_config.ui.description = "Chat image studio on the Qwen model family"
    cl_config.ui.cot = "full"  # show tool steps
    cl_config.ui.confirm_new_chat = False
    upload = cl_config.features.spontaneous_file_upload
    if upload is not None:
        upload.enabled = True
        upload.accept = list(render.ACCEPTED_MIME)
        upload.max_files = 4
        upload.max_size_mb = max(1, PROFILE.limits.max_upload_bytes // (1024 * 1024))
    cl_config.features.edit_message = False  # a sent turn is history; edit by asking again
    cl_config.project.session_timeout = 3600  # a dropped browser keeps its turn running this long
    public = Path(cl_config.root) / "public"
    public.mkdir(parents=True, exist_ok=True)
    css = (resources.files("ui.chat_app") / "atelier.css").read_text(encoding="utf-8")
    (public / "atelier.css").write_text(css, encoding="utf-8")
    cl_config.ui.custom_css = "/public/atelier.css"


configure_chainlit()
STORAGE = LocalStorageClient(FILES_DIR)
install_file_route(fastapi_app, STORAGE)


@cl.data_layer
def _data_layer():
    return build_data_layer(DB_PATH, FILES_DIR, storage=STORAGE)


# -- sign-in: a password when configured, else one local user (thread history needs a user) ---
if os.environ.get(ENV_PASSWORD):

    @cl.password_auth_callback
    async def _password_login(username: str, password: str):
        expected_user = os.environ.get(ENV_USERNAME, "atelier")
        ok_user = hmac.compare_digest(username.encode(), expected_user.encode())
        ok_pass = hmac.compare_digest(password.encode(), os.environ[ENV_PASSWORD].encode())
        if ok_user and ok_pass:
            return cl.User(identifier=username, metadata={"provider": "password"})
        return None

else:

    @cl.header_auth_callback
    async def _local_login(headers):
        return cl.User(identifier=LOCAL_USER, metadata={"provider": "local"})


# -- the agent --------------------------------------------------------------------------------
_STUDIOS: dict[str, Any] = {}
_RUNNING: dict[str, asyncio.Task] = {}  # thread id -> the turn running on it (any connection)
_STOPPING: set[str] = set()  # threads whose running turn was asked to stop
_ASKING: dict[str, asyncio.Task] = {}  # thread id -> the turn waiting on a consent answer
_LEFT: set[str] = set()  # threads whose browser left while a consent question was open


def studio(overrides: dict[str, Any]):
    """One Atelier per distinct set of chat-settings overrides. They share the planner (the
    settings only touch the engine and identity sections; a GGUF planner is loaded once) and
    engines are cached per process by their settings."""
    from agent import Atelier

    merged = render.merge_overrides(BASE_OVERRIDES, overrides)
    key = json.dumps(merged, sort_keys=True)
    if key not in _STUDIOS:
        base_key = json.dumps(BASE_OVERRIDES, sort_keys=True)
        shared = {"planner": studio({}).planner} if key != base_key else {}
        _STUDIOS[key] = Atelier(profile=load_profile(os.environ.get(ENV_PROFILE), merged), **shared)
    return _STUDIOS[key]


def _user_id() -> str:
    user = cl.user_session.get("user")
    return getattr(user, "identifier", None) or LOCAL_USER


def _thread_id() -> str:
    return cl.context.session.thread_id


_SESSIONS: dict[tuple[str, str], tuple[str, Any]] = {}  # (thread id, user) -> (overrides key, agent session)


def current_session():
    """The agent session of this chat (one per thread, shared by reconnects so that stop reaches
    a running turn), rebuilt when the chat settings change."""
    overrides = cl.user_session.get("overrides") or {}
    key = json.dumps(overrides, sort_keys=True)
    thread_id, user_id = _thread_id(), _user_id()
    known = _SESSIONS.get((thread_id, user_id))
    if known is None or known[0] != key:
        known = (key, studio(overrides).session(thread_id, user_id=user_id))
        _SESSIONS[(thread_id, user_id)] = known
    return known[1]


def chat_settings(values: dict[str, Any] | None = None) -> cl.ChatSettings:
    values = values or {}
    return cl.ChatSettings([
        Slider(id=render.SETTING_STEPS, label="Steps (quality)",
               initial=values.get(render.SETTING_STEPS, PROFILE.engine.steps),
               min=1, max=max(50, PROFILE.engine.steps), step=1,
               description="Denoising steps: more is slower and finer"),
        NumberInput(id=render.SETTING_SEED, label="Seed",
                    initial=values.get(render.SETTING_SEED, PROFILE.engine.seed_base),
                    description="Same seed and request, same image"),
        Slider(id=render.SETTING_IDENTITY, label="Identity threshold (max face distance)",
               initial=values.get(render.SETTING_IDENTITY, PROFILE.identity.max_distance),
               min=0.3, max=0.8, step=0.05,
               description="Lower is stricter: an edited face must stay closer to the original"),
    ])


def _version_actions(current: str | None) -> list[cl.Action]:
    actions = [cl.Action(name="versions", payload={}, label="Versions", icon="history",
                         tooltip="Every image of this chat, with branch from here")]
    if current:
        actions.insert(0, cl.Action(name="undo", payload={"ref": current}, label="Undo", icon="undo-2",
                                    tooltip="Go back to the version before this one"))
    return actions


# -- lifecycle --------------------------------------------------------------------------------
@cl.on_chat_start
async def on_chat_start():
    cl.user_session.set("overrides", {})
    await chat_settings().send()
    await cl.Message(content=render.banner(PROFILE), author="Atelier").send()


@cl.on_chat_resume
async def on_chat_resume(thread):
    # Chainlit shows the thread's messages, steps and images from the data layer and restores
    # this user session (the chat settings and "overrides") from the thread's metadata; the
    # agent's own state (versions, current image) is in its checkpointer under the thread id.
    values = cl.user_session.get("chat_settings") or {}
    if not isinstance(cl.user_session.get("overrides"), dict):
        cl.user_session.set("overrides", {})
    await chat_settings(values if isinstance(values, dict) else {}).send()
    # not awaited: Chainlit shows the thread only after this callback returns
    asyncio.create_task(_ask_pending_consent(_thread_id()))


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]):
    try:
        overrides = render.settings_overrides(values, PROFILE)
    except (TypeError, ValueError):
        await cl.Message(content="Those settings are not numbers I can use; nothing changed.").send()
        return
    cl.user_session.set("overrides", overrides)


@cl.on_stop
async def on_stop():
    _STOPPING.add(_thread_id())
    known = _SESSIONS.get((_thread_id(), _user_id()))
    if known is not None:
        try:
            known[1].cancel()
        except Exception:  # noqa: BLE001 - stopping must never fail loudly
            log.exception("cancel failed")


@cl.on_chat_end
async def on_chat_end():
    # A browser that goes away mid-turn does not stop the turn: it finishes, its images are
    # stored and sealed, and the persisted thread shows them when the chat is resumed. A turn
    # waiting on a consent question has nothing running (the agent's state is checkpointed):
    # its question is withdrawn here and asked again when the chat is reopened.
    thread_id = _thread_id()
    asking = _ASKING.get(thread_id)
    if asking is not None and not asking.done():
        _LEFT.add(thread_id)
        asking.cancel()


# -- a turn -----------------------------------------------------------------------------------
class TurnView:
    """Turns the agent's TurnEvents into Chainlit steps and messages."""

    def __init__(self):
        # tool steps hang under the turn's run step (Chainlit wraps on_message in one), so they
        # show between the user's message and the answer, in a resumed thread too
        running = local_steps.get() or []
        self.parent_id: str | None = running[-1].id if running else None
        self.steps: dict[str, cl.Step] = {}
        self._progress_at: dict[str, float] = {}  # call id -> when its step last showed progress
        self._denoising_total: dict[str, int] = {}  # call id -> denoising steps of its run
        self.status: dict[str, Any] | None = None  # the transient "planning…" line (a step dict)
        self.images: list[OutputImage] = []
        self.answer: str = ""
        self.consent: ConsentQuestion | None = None
        self.refusal: Refusal | None = None
        self.error: TurnError | None = None
        self.current: str | None = None

    async def show_status(self, text: str | None) -> None:
        """A transient line while nothing else shows progress (screening, planning: the offline
        planner's first call loads its model); removed once a step or the answer is shown. Sent
        through the emitter only, so it is never stored in the thread."""
        emitter = cl.context.emitter
        if text:
            if self.status is None:
                self.status = cl.Message(content="", author="Atelier").to_dict()
                self.status.update({"output": f"_{text}…_", "createdAt": utc_now()})
                await emitter.send_step(self.status)
            else:
                self.status["output"] = f"_{text}…_"
                await emitter.update_step(self.status)
        elif self.status is not None:
            status, self.status = self.status, None
            await emitter.delete_step(status)

    async def handle(self, event: TurnEvent) -> None:
        if isinstance(event, StatusEvent):
            if not self.steps or all(step.end is not None for step in self.steps.values()):
                await self.show_status(event.text.rstrip(".…"))
            return
        if isinstance(event, (ToolStartEvent, ConsentEvent, AnswerEvent, RefusalEvent, ErrorEvent, DoneEvent)):
            await self.show_status(None)
        if isinstance(event, ToolStartEvent):
            step = cl.Step(name=event.name or "tool", type="tool", show_input="json", parent_id=self.parent_id)
            step.input = render.tool_input(event.args)
            step.output = "starting..."
            step.start = utc_now()  # start without end: the UI shows it as running
            await step.send()
            self.steps[event.call_id or str(len(self.steps))] = step
        elif isinstance(event, ProgressEvent):
            step = self.steps.get(event.call_id)
            self._denoising_total[event.call_id] = event.total
            now = time.monotonic()
            last = self._progress_at.get(event.call_id, 0.0)
            final = event.step >= event.total
            if step is not None and (final or now - last >= PROGRESS_INTERVAL_S):
                self._progress_at[event.call_id] = now
                step.output = render.progress_line(event.step, event.total)
                await step.update()
        elif isinstance(event, ToolEndEvent):
            step = self.steps.get(event.call_id)
            if step is None:
                step = cl.Step(name=event.name or "tool", type="tool", show_input="json", parent_id=self.parent_id)
                step.input = render.tool_input(event.args)
                await step.send()
            step.output = render.tool_output(event.result, self._denoising_total.get(event.call_id))
            step.end = utc_now()
            if not event.result.ok or event.result.error:
                step.is_error = True
            await step.update()
        elif isinstance(event, ImageEvent):
            self.images.append(OutputImage(ref=event.ref, path=event.path, width=event.width, height=event.height))
            self.current = event.ref or self.current
        elif isinstance(event, ConsentEvent):
            self.consent = ConsentQuestion(question=event.question, people=event.people, call=event.call)
            for step in self.steps.values():
                if step.end is None:
                    step.output = "waiting for your answer to the consent question"
                    await step.update()
        elif isinstance(event, RefusalEvent):
            self.refusal = Refusal(category=event.category, reason=event.reason)
        elif isinstance(event, AnswerEvent):
            self.answer = event.text
        elif isinstance(event, ErrorEvent):
            self.error = TurnError(code=event.code, message=event.message, http_status=event.http_status)
        elif isinstance(event, DoneEvent):
            self.absorb_result(event.result)

    def absorb_result(self, result: TurnResult) -> None:
        """Fill in from the TurnResult of the `done` event: the source of truth for the turn."""
        self.answer = result.answer or self.answer
        for image in result.images:
            if all(image.ref != seen.ref for seen in self.images):
                self.images.append(image)
                self.current = image.ref
        self.consent = result.consent
        self.refusal = result.refused or self.refusal
        self.error = result.error or self.error

    async def close_open_steps(self, note: str) -> None:
        """Steps that never got their tool_end (stopped, failed, disconnected) say so and end."""
        await self.show_status(None)
        for step in self.steps.values():
            if step.end is None:
                step.output = note
                step.end = utc_now()
                step.is_error = True
                await step.update()

    def closing_text(self, has_images: bool) -> str:
        return render.closing_text(self.answer, self.refusal, self.error, has_images)

    async def finish(self) -> None:
        """The closing message: the text with the turn's images inline and the version actions."""
        elements = [
            cl.Image(path=img.path, name=img.ref or Path(img.path).stem, display="inline", size="large")
            for img in self.images
            if img.path and Path(img.path).is_file()
        ]
        await cl.Message(content=self.closing_text(bool(elements)), elements=elements, author="Atelier",
                         actions=_version_actions(self.current) if elements else []).send()


async def _ask_consent(consent: ConsentQuestion) -> bool | None:
    people = consent.people
    question = consent.question or "This edit changes the face of a real person. Do you have their consent?"
    if people:
        question += "\n\nPeople: " + ", ".join(f"`{p}`" for p in people)
    answer = await cl.AskActionMessage(
        content=question,
        actions=[
            cl.Action(name="consent", payload={"approved": True}, label=TEXTS["consent_yes"]),
            cl.Action(name="consent", payload={"approved": False}, label=TEXTS["consent_no"]),
        ],
        author="Atelier",
        timeout=600,
    ).send()
    if answer is None:
        return None
    return bool((answer.get("payload") or {}).get("approved"))


async def _run_turn(session, text: str, images: list[NamedImage]) -> None:
    view = TurnView()
    try:
        async for event in session.astream(text, images=images):
            await view.handle(event)
        await _answer_consent_and_finish(session, view)
    except asyncio.CancelledError:
        await view.close_open_steps("stopped")
        raise


async def _answer_consent_and_finish(session, view: TurnView) -> None:
    """Ask the pending consent question(s) with buttons, resume the turn, show its result."""
    thread_id = _thread_id()
    try:
        while view.consent is not None:
            _ASKING[thread_id] = asyncio.current_task()
            try:
                approved = await _ask_consent(view.consent)
            except asyncio.CancelledError:
                if thread_id in _LEFT:  # the browser left on the question: asked again on resume
                    _LEFT.discard(thread_id)
                    return
                raise
            finally:
                _ASKING.pop(thread_id, None)
            if approved is None:
                await asyncio.to_thread(session.resume, False)
                await view.close_open_steps(TEXTS["consent_timeout"])
                await cl.Message(content=TEXTS["consent_timeout"], author="Atelier").send()
                return
            view.consent = None
            async for event in session.astream_resume(approved):
                await view.handle(event)
        await view.close_open_steps("not run")
        await view.finish()
    except asyncio.CancelledError:
        await view.close_open_steps("stopped")
        raise


async def _ask_pending_consent(thread_id: str) -> None:
    """A chat reopened while its turn waits for a consent answer (the tab was closed on the
    question) asks it again; the answer resumes the turn as if it had never been left."""
    for _ in range(50):  # the question's old task ends when its tab's disconnect is handled
        running = _RUNNING.get(thread_id)
        if running is None or running.done():
            break
        await asyncio.sleep(0.2)
    else:
        return
    session = current_session()
    pending = await asyncio.to_thread(lambda: session.pending_consent)
    if pending is None:
        return
    _RUNNING[thread_id] = asyncio.current_task()
    view = TurnView()
    view.consent = pending
    try:
        await _answer_consent_and_finish(session, view)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001
        await _say_failure(err)
    finally:
        if _RUNNING.get(thread_id) is asyncio.current_task():
            _RUNNING.pop(thread_id, None)
        await cl.context.emitter.task_end()  # not a Chainlit-run task: say it is over


async def _say_failure(err: BaseException) -> None:
    """A failure as one line in the chat (typed errors carry their own message), never a trace."""
    if isinstance(err, RateLimitedError):
        wait = TEXTS["retry_after"].format(seconds=err.retry_after) if err.retry_after else ""
        text = err.message.rstrip(".") + "." + wait
    elif isinstance(err, AtelierError):
        text = TEXTS["error"].format(message=err.message)
    elif isinstance(err, MemoryError):
        text = TEXTS["error"].format(message=TEXTS["out_of_memory"])
    else:
        log.exception("chat action failed", exc_info=err)
        text = TEXTS["unexpected"].format(kind=type(err).__name__)
    await cl.Message(content=text, author="Atelier").send()


def _attachments(message: cl.Message) -> tuple[list[NamedImage], list[str]]:
    """The usable images of a message (Chainlit's copy, with the name the person's file had, so
    errors never show the copy's uuid name), and a line for each file that is not usable."""
    from agent.session import NamedImage

    paths, problems = [], []
    for element in message.elements or []:
        path = getattr(element, "path", None)
        size = Path(path).stat().st_size if path and Path(path).is_file() else None
        problem = render.upload_problem(element.name, getattr(element, "mime", None), size,
                                        PROFILE.limits.max_upload_bytes)
        if problem:
            problems.append(problem)
        elif path:
            paths.append(NamedImage(path, element.name or None))
    return paths, problems


@cl.on_message
async def on_message(message: cl.Message):
    thread_id = _thread_id()
    running = _RUNNING.get(thread_id)
    if running is not None and not running.done():
        # the engine stops at its next step; until then the thread's turn is still running
        busy = TEXTS["stopping"] if thread_id in _STOPPING else TEXTS["busy"]
        await cl.Message(content=busy, author="Atelier").send()
        return
    paths, problems = _attachments(message)
    if problems:
        await cl.Message(content="\n".join(problems), author="Atelier").send()
        return
    _RUNNING[thread_id] = asyncio.current_task()
    try:
        session = current_session()
        await _run_turn(session, message.content or "", paths)
    except asyncio.CancelledError:
        raise  # the stop button: Chainlit says so; on_stop cancelled the agent
    except Exception as err:  # noqa: BLE001 - every failure becomes one readable line
        await _say_failure(err)
    finally:
        if _RUNNING.get(thread_id) is asyncio.current_task():
            _RUNNING.pop(thread_id, None)
            _STOPPING.discard(thread_id)


# -- versions: timeline, undo, branch from here -----------------------------------------------
def _guarded(callback):
    """Action callbacks report failures (rate limit, unknown image...) like turns do."""
    async def run(action: cl.Action):
        try:
            await callback(action)
        except Exception as err:  # noqa: BLE001
            await _say_failure(err)

    run.__name__ = callback.__name__
    return run


@cl.action_callback("versions")
@_guarded
async def on_versions(action: cl.Action):
    session = current_session()
    versions = await asyncio.to_thread(session.history)
    current = session.current
    if not versions:
        await cl.Message(content=TEXTS["versions_empty"], author="Atelier").send()
        return
    rows = render.versions_summary(versions, current)
    elements, actions, lines = [], [], [TEXTS["versions_title"]]
    for i, row in enumerate(rows, 1):
        marker = " **(current)**" if row["current"] else ""
        lines.append(f"{i}. `{row['ref']}` — {row['made_by']}" + (f" from `{row['parent']}`" if row["parent"] else "") + marker)
        try:
            path = await asyncio.to_thread(session.image_path, row["ref"])
            elements.append(cl.Image(path=path, name=row["ref"], display="inline", size="small"))
        except AtelierError:
            continue
        if not row["current"]:
            actions.append(cl.Action(name="branch", payload={"ref": row["ref"]}, label=f"Branch from {row['ref']}",
                                     icon="git-branch"))
    await cl.Message(content="\n".join(lines), elements=elements, actions=actions, author="Atelier").send()


async def _revert_to(ref: str, template: str) -> None:
    session = current_session()
    result = await asyncio.to_thread(session.call_tool, "revert", {"image": ref})
    if result.error is not None:
        await cl.Message(content=TEXTS["error"].format(message=result.error.message), author="Atelier").send()
        return
    path = await asyncio.to_thread(session.image_path, ref)
    await cl.Message(content=template.format(ref=ref), author="Atelier",
                     elements=[cl.Image(path=path, name=ref, display="inline", size="medium")],
                     actions=_version_actions(ref)).send()


@cl.action_callback("undo")
@_guarded
async def on_undo(action: cl.Action):
    session = current_session()
    current = session.current or action.payload.get("ref")
    parent = session.version(current).parent if current else None
    if not parent:
        await cl.Message(content=TEXTS["undo_nothing"], author="Atelier").send()
        return
    await _revert_to(parent, TEXTS["undone"])


@cl.action_callback("branch")
@_guarded
async def on_branch(action: cl.Action):
    await _revert_to(action.payload["ref"], TEXTS["branched"])
