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
from agent.turn import (AnswerEvent, CallRecord, ConsentEvent, ConsentQuestion, DoneEvent, ErrorEvent, Followup,
                        ImageEvent, OutputImage, ProgressEvent, Refusal, RefusalEvent, StatusEvent, ToolEndEvent,
                        ToolStartEvent, TurnError, TurnEvent, TurnResult)
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
# the threads: a SQLite file of the app, or the Postgres database of store.url / store.threads
THREADS_DB = PROFILE.store.threads_url() or APP_DIR / "threads.sqlite"
FILES_DIR = PROFILE.store.files or APP_DIR / "files"  # a path or an fsspec URL
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
    return build_data_layer(THREADS_DB, FILES_DIR, storage=STORAGE)


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
_VIEWS: dict[str, "TurnView"] = {}  # thread id -> the view of its running turn (stop clears its status)


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
        NumberInput(id=render.SETTING_SEED, label="Seed (0 = a new random one each time)",
                    initial=values.get(render.SETTING_SEED, PROFILE.engine.seed or 0),
                    description="Any other number: the same seed and request give the same image"),
        Slider(id=render.SETTING_IDENTITY, label="Identity threshold (max face distance)",
               initial=values.get(render.SETTING_IDENTITY, PROFILE.identity.max_distance),
               min=0.3, max=0.8, step=0.05,
               description="Lower is stricter: an edited face must stay closer to the original"),
    ])


def result_actions(ref: str | None, followups: list[Followup] = (),
                   variations: list[tuple[str, int | None]] = ()) -> list[cl.Action]:
    """The buttons under a result: a failed face check's next steps first (another try, back to
    the source), then the history tree: branch from this image (from each one, "Branch from #4",
    when the message shows several: `variations`, (ref, number) pairs), undo, every version."""
    actions = []
    for followup in followups:
        if followup.kind == "retry":
            actions.append(cl.Action(name="retry", payload={"call": followup.call}, label=followup.label,
                                     icon="refresh-cw", tooltip="Run the same change again (a new attempt)"))
        elif followup.ref:
            actions.append(cl.Action(name="branch", payload={"ref": followup.ref}, label=followup.label,
                                     icon="arrow-left", tooltip="Make the image this one started from current again"))
    if len(variations) > 1:
        for each, number in variations:
            actions.append(cl.Action(name="branch", payload={"ref": each}, icon="git-branch",
                                     label=TEXTS["action_branch_from"].format(number=number) if number else each,
                                     tooltip="Make this image the current one: the next change starts from it"))
    elif ref:
        actions.append(cl.Action(name="branch", payload={"ref": ref}, label=TEXTS["action_branch"], icon="git-branch",
                                 tooltip="Make this image the current one: the next change starts from it"))
    if ref:
        actions.append(cl.Action(name="undo", payload={"ref": ref}, label=TEXTS["action_undo"], icon="undo-2",
                                 tooltip="Go back to the version before the current one"))
    actions.append(cl.Action(name="versions", payload={}, label=TEXTS["action_versions"], icon="history",
                             tooltip="Every image of this chat, with what made it"))
    return actions


def _result_metadata(ref: str | None, followups: list[Followup], variations: list[tuple[str, int | None]]
                     ) -> dict[str, Any]:
    return {render.RESULT_KEY: {"ref": ref, "followups": [f.model_dump(mode="json") for f in followups],
                                "images": [{"ref": each, "number": number} for each, number in variations]}}


async def send_result(content: str, images: list[OutputImage], followups: list[Followup] = ()) -> None:
    """A message with images: the text, each image with its compact line under it (always
    visible), and the buttons; what the buttons need is kept in the message's metadata, so a
    reopened chat rebuilds them (`on_chat_resume`)."""
    elements: list[Any] = []
    shown = [img for img in images if img.path and Path(img.path).is_file()]
    for img in shown:
        elements.append(cl.Image(path=img.path, name=img.ref, display="inline", size="large"))
    for img in shown:
        if img.line:
            elements.append(cl.Text(name=f"#{img.number}" if img.number else img.ref, content=img.line,
                                    display="inline"))
    ref = shown[-1].ref if shown else None
    variations = [(img.ref, img.number) for img in shown]
    await cl.Message(content=content, elements=elements, author="Atelier",
                     actions=result_actions(ref, followups, variations) if shown else [],
                     metadata=_result_metadata(ref, followups, variations) if shown else None).send()


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
    asyncio.create_task(_rebuild_actions(thread))
    asyncio.create_task(_ask_pending_consent(_thread_id()))


async def _rebuild_actions(thread: dict[str, Any]) -> None:
    """The buttons of a reopened chat's results, sent again for their messages."""
    try:
        for message_id, ref, followups, variations in render.stored_results(thread):
            for action in result_actions(ref, followups, variations):
                await action.send(for_id=message_id)
    except Exception:  # noqa: BLE001 - a chat without its buttons still reads
        log.exception("could not rebuild the buttons of thread %s", thread.get("id"))


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
    view = _VIEWS.get(_thread_id())
    if view is not None:  # "planning…" goes at once, whatever the worker is still finishing
        await view.show_status(None)
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

    def __init__(self, session=None):
        self.session = session  # the agent session (its images: the faces a check measured)
        # tool steps hang under the turn's run step (Chainlit wraps on_message in one), so they
        # show between the user's message and the answer, in a resumed thread too
        running = local_steps.get() or []
        self.parent_id: str | None = running[-1].id if running else None
        self.steps: dict[str, cl.Step] = {}
        self._progress_at: dict[str, float] = {}  # call id -> when its step last showed progress
        self._denoising_total: dict[str, int] = {}  # call id -> denoising steps of its run
        self._denoising_step: dict[str, int] = {}  # call id -> the last denoising step it reported
        self.status: dict[str, Any] | None = None  # the transient "planning…" line (a step dict)
        self.images: list[OutputImage] = []
        self.answer: str = ""
        self.consent: ConsentQuestion | None = None
        self.refusal: Refusal | None = None
        self.error: TurnError | None = None
        self.current: str | None = None
        self.followups: list[Followup] = []
        self.reverted: str | None = None  # the version a revert made current (shown like a result)
        self.running: str | None = None  # the tool whose step is open (a stop says which one ends)

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
            self.running = event.name
        elif isinstance(event, ProgressEvent):
            step = self.steps.get(event.call_id)
            self._denoising_total[event.call_id] = event.total
            self._denoising_step[event.call_id] = event.step
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
            faces = await self.faces_checked(CallRecord(name=event.name, args=event.args, result=event.result))
            if faces is not None:
                step.elements = [faces]
            self.running = None
            if event.name == "revert" and event.result.ok and event.result.current:
                self.reverted = event.result.current
            if not event.result.ok or event.result.error:
                step.is_error = True
            await step.update()
        elif isinstance(event, ImageEvent):
            self.images.append(OutputImage(ref=event.ref, path=event.path, width=event.width, height=event.height))
            self.current = event.ref or self.current
        elif isinstance(event, ConsentEvent):
            self.consent = ConsentQuestion(question=event.question, people=event.people, call=event.call,
                                           faces=event.faces)
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
        for image in result.images:  # the result's own records carry the line under each image
            known = next((k for k, seen in enumerate(self.images) if seen.ref == image.ref), None)
            if known is None:
                self.images.append(image)
            else:
                self.images[known] = image
            self.current = image.ref
        self.followups = list(result.followups)
        for record in result.tool_calls:
            if record.name == "revert" and record.result.ok and record.result.current:
                self.reverted = record.result.current
        self.consent = result.consent
        self.refusal = result.refused or self.refusal
        self.error = result.error or self.error

    async def close_open_steps(self, note: str) -> None:
        """Steps that never got their tool_end (stopped, failed, disconnected) say so and end
        (with the denoising step they had reached)."""
        await self.show_status(None)
        for call_id, step in self.steps.items():
            if step.end is None:
                reached = self._denoising_step.get(call_id)
                total = self._denoising_total.get(call_id)
                step.output = f"{note} at denoising step {reached} of {total}" if reached and total else note
                step.end = utc_now()
                step.is_error = True
                await step.update()

    def closing_text(self, has_images: bool) -> str:
        return render.closing_text(self.answer, self.refusal, self.error, has_images)

    async def finish(self, session) -> None:
        """The closing message: the text, the turn's images each with its line, and the buttons.
        A revert (`/undo`, the Undo button) shows the version it made current, the same way."""
        images = list(self.images)
        if not images and self.reverted:
            images = [await asyncio.to_thread(shown_image, session, self.reverted)]
        shown = [img for img in images if img.path and Path(img.path).is_file()]
        await send_result(self.closing_text(bool(shown)), shown, self.followups)

    async def faces_checked(self, record: CallRecord) -> cl.Image | None:
        """The faces a call's identity check measured, cropped from the image it started from and
        labelled with the verdict the line gives ("face 2 (the person on the right) LOST"): shown
        in the call's step, next to its checks."""
        from agent.answers import face_notes

        faces, source = record.result.faces, record.args.get("image")
        if self.session is None or not faces or not source or not all(f.box for f in faces):
            return None
        try:
            path = await asyncio.to_thread(self.session.image_path, source)
            items = [(path, tuple(f.box), note) for f, note in zip(faces, face_notes(record))]
            data = await asyncio.to_thread(render.faces_sheet, items, lines=4)
        except (AtelierError, OSError, ValueError):
            log.exception("could not crop the checked faces")
            return None
        return cl.Image(content=data, name="faces-checked.png", display="inline", size="large", mime="image/png")

    def stop_text(self) -> str:
        """What a stop ended: planning (nothing ran) or the tool whose step was open (and the
        denoising step it had reached)."""
        if self.consent is not None:  # stopped on the consent question: the call never started
            return TEXTS["stopped_question"].format(tool=self.running or "the edit")
        if self.running:
            open_calls = [k for k, step in self.steps.items() if step.end is None]
            reached = [(self._denoising_step[k], self._denoising_total[k]) for k in open_calls
                       if k in self._denoising_step and k in self._denoising_total]
            where = TEXTS["stopped_at_step"].format(step=reached[-1][0], total=reached[-1][1]) if reached else ""
            return TEXTS["stopped_running"].format(tool=self.running, where=where)
        return TEXTS["stopped_planning"]


def shown_image(session, ref: str) -> OutputImage:
    """One of the chat's versions as a result shows it (outside a turn: undo, branch)."""
    version = session.version(ref)
    facts = session.facts()
    return OutputImage(ref=ref, path=session.image_path(ref), width=version.width, height=version.height,
                       number=facts.number(ref), line=session.image_line(ref))


async def _show_people(session, consent: ConsentQuestion) -> None:
    """The faces a consent question is about, cropped and labelled as every check names them,
    in their numbered order (one picture, so the order holds wherever it is shown)."""
    items = []
    for face in consent.faces:
        if face.ref is None or face.box is None:
            continue
        try:
            items.append((await asyncio.to_thread(session.image_path, face.ref), face.box, face.label))
        except AtelierError:
            continue
    if not items:
        return
    try:
        data = await asyncio.to_thread(render.faces_sheet, items)
    except (OSError, ValueError):
        log.exception("could not crop the faces of a consent question")
        return
    text = render.consent_people_text([label for _, _, label in items])
    await cl.Message(content=text, author="Atelier", elements=[
        cl.Image(content=data, name="people.png", display="inline", size="large", mime="image/png")]).send()


async def _ask_consent(session, consent: ConsentQuestion) -> bool | None:
    question = consent.question or "This edit changes the face of a real person. Do you have their consent?"
    await _show_people(session, consent)
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
    view = TurnView(session)
    thread_id = _thread_id()
    _VIEWS[thread_id] = view
    try:
        async for event in session.astream(text, images=images):
            await view.handle(event)
        await _answer_consent_and_finish(session, view)
    except asyncio.CancelledError:
        await _stopped(view)
        raise
    finally:
        if _VIEWS.get(thread_id) is view:
            _VIEWS.pop(thread_id, None)


async def _stopped(view: TurnView) -> None:
    """A stopped turn: its status goes, its open steps say so, and one line says what stopped."""
    text = view.stop_text()
    await view.close_open_steps("stopped")
    await cl.Message(content=text, author="Atelier").send()


async def _answer_consent_and_finish(session, view: TurnView) -> None:
    """Ask the pending consent question(s) with buttons, resume the turn, show its result."""
    thread_id = _thread_id()
    try:
        while view.consent is not None:
            _ASKING[thread_id] = asyncio.current_task()
            try:
                approved = await _ask_consent(session, view.consent)
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
        await view.finish(session)
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
    view = TurnView(session)
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
        if thread_id not in _STOPPING:
            await cl.Message(content=TEXTS["busy"], author="Atelier").send()
            return
        await asyncio.wait([running])  # a stopped turn's last words in the chat: moments
    paths, problems = _attachments(message)
    if problems:
        await cl.Message(content="\n".join(problems), author="Atelier").send()
        return
    _RUNNING[thread_id] = asyncio.current_task()
    try:
        session = current_session()
        if session.stopping:  # a stopped engine ends at its next step: this message waits for it
            waiting = TurnView()
            _VIEWS[thread_id] = waiting
            await waiting.show_status(TEXTS["waiting_for_stop"])
            try:
                await session.wait_stopped()
            finally:
                await waiting.show_status(None)
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
    entries = await asyncio.to_thread(session.timeline)
    if not entries:
        await cl.Message(content=TEXTS["versions_empty"], author="Atelier").send()
        return
    items, actions = [], []
    for entry in entries:
        try:
            items.append((await asyncio.to_thread(session.image_path, entry.ref), f"#{entry.number} {entry.made}"))
        except AtelierError:
            continue
        if not entry.current:
            actions.append(cl.Action(name="branch", payload={"ref": entry.ref}, label=f"Branch from #{entry.number}",
                                     icon="git-branch", tooltip=entry.made))
    elements = []
    if items:
        data = await asyncio.to_thread(render.versions_sheet, items)
        elements.append(cl.Image(content=data, name="versions.png", display="inline", size="large", mime="image/png"))
    await cl.Message(content=render.versions_text(entries), elements=elements, actions=actions,
                     author="Atelier").send()


async def _revert_to(ref: str) -> None:
    """Make `ref` current (undo, branch, back): answered like `/undo`, with the image and its buttons."""
    session = current_session()
    result = await asyncio.to_thread(session.call_tool, "revert", {"image": ref})
    if result.error is not None:
        await cl.Message(content=TEXTS["error"].format(message=result.error.message), author="Atelier").send()
        return
    image = await asyncio.to_thread(shown_image, session, ref)
    await send_result(result.answer, [image])


@cl.action_callback("undo")
@_guarded
async def on_undo(action: cl.Action):
    session = current_session()
    current = session.current or action.payload.get("ref")
    parent = session.version(current).parent if current else None
    if not parent:
        await cl.Message(content=TEXTS["undo_nothing"], author="Atelier").send()
        return
    await _revert_to(parent)


@cl.action_callback("branch")
@_guarded
async def on_branch(action: cl.Action):
    await _revert_to(action.payload["ref"])


@cl.action_callback("retry")
@_guarded
async def on_retry(action: cl.Action):
    """Another try of a call whose face check failed: the same change on the same source, run
    as a turn (steps, checks, the result and its buttons)."""
    call = action.payload.get("call") or {}
    thread_id = _thread_id()
    running = _RUNNING.get(thread_id)
    if running is not None and not running.done():
        await cl.Message(content=TEXTS["busy"], author="Atelier").send()
        return
    _RUNNING[thread_id] = asyncio.current_task()
    try:
        session = current_session()
        view = TurnView(session)
        _VIEWS[thread_id] = view
        try:
            async for event in session.astream_call(str(call.get("name") or ""), dict(call.get("args") or {})):
                await view.handle(event)
            await _answer_consent_and_finish(session, view)
        except asyncio.CancelledError:  # the stop button, as for a typed request
            await _stopped(view)
            raise
    finally:
        _VIEWS.pop(thread_id, None)
        if _RUNNING.get(thread_id) is asyncio.current_task():
            _RUNNING.pop(thread_id, None)
            _STOPPING.discard(thread_id)
