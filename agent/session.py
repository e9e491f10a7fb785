"""The Python API: `Atelier` (one per process) and its `Session`s (one per conversation).

    from agent import Atelier
    app = Atelier(profile="tiny")
    s = app.session("thread-1", user_id="me")
    result = s.send("a lighthouse at dusk, phone wallpaper")      # TurnResult
    for event in s.stream("make it warmer"): ...                   # TurnEvent(kind, data)
    result = await s.asend("/adjust exposure=+1")                  # async
    s.resume(approved=True)                                        # answer a consent question

A session is a LangGraph thread (`thread_id`) in the profile's checkpointer (SQLite by default,
Postgres by URL), so it survives a process restart; images live in the image store as a tree of
versions (undo and branch are a `revert` to an older ref). `user_id` is who is talking: the audit
log is per user, and rate limits count per `rate_key` (default: the user id), in a quota every
process on the data root shares. One turn at a time per thread, across processes: a turn holds
the thread's lease in the sessions database (agent.leases).

Failures a user causes before anything runs raise typed errors (`RateLimitedError`,
`BadImageError`, `UnknownRefError`, `ToolArgumentError` for a bad slash command, `ThreadBusyError`
when another request still runs a turn of the thread after `limits.thread_busy_wait_s`,
`DatabaseFileError` for a sessions file SQLite cannot read); everything that happens inside the
turn (refusals, tool errors, planner failures) comes back in the `TurnResult`. A turn that could
not be saved (`CheckpointError`) or crashed comes back with `error` (its `http_status` set) and
that error as its answer, never the previous turn's answer or images.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

from langgraph.types import Command
from pydantic import BaseModel, Field

from agent.checkpoints import guarded
from agent.config import Profile, _deep_merge, load_profile
from agent.graph import Services, TurnContext, TurnState, assistant_message, build_graph
from agent.planners.base import ChatModel, ToolCall
from agent.turn import (ConsentEvent, ConsentQuestion, DoneEvent, ErrorEvent, EventKind, OutputImage, PendingCall,
                        TurnError, TurnEvent, TurnResult, AnswerEvent, Usage, VersionEntry)
from agent.slash import is_slash, parse_slash
from agent.studio import open_store
from tools.dbfile import (POSTGRES_EXTRA, check_sqlite_file, connect_postgres, is_postgres, postgres_where,
                          sqlite_path)
from tools.errors import AtelierError, BadImageError, CheckpointError, PromptTooLongError, RefusedError
from tools.schemas import is_ref
from tools.store import LOCAL_USER, ImageStore, ImageVersion, OwnedImages

log = logging.getLogger(__name__)

__all__ = ["Atelier", "Session", "NamedImage", "TurnEvent", "TurnResult", "EventKind", "thread_key"]


class NamedImage(NamedTuple):
    """An image with the file name the person gave it (a chat app's temporary copy of an
    attachment): errors name `filename`, never the temporary path."""

    data: str | bytes | os.PathLike
    filename: str | None = None


ImageInput = str | bytes | os.PathLike | NamedImage


def open_checkpointer(url: str):
    """A LangGraph checkpointer for a sessions URL: a SQLite path, or postgresql://... (a pool of
    connections, so the threads of one server do not queue on one connection)."""
    if is_postgres(url):
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.rows import dict_row
        except ImportError:
            raise AtelierError(f"a Postgres sessions URL needs the postgres extra: {POSTGRES_EXTRA}") from None
        pool = connect_postgres(url, "sessions", max_size=8, prepare_threshold=0, row_factory=dict_row)
        saver = guarded(_plain_index_saver(PostgresSaver), postgres_where(url), pool)
        with pool.connection() as conn:  # two processes starting at once must not both migrate
            # Polled, not a blocking pg_advisory_lock: a waiter blocked inside a statement holds a
            # transaction open, and index builds wait for open transactions.
            deadline = time.monotonic() + 120
            while not conn.execute("SELECT pg_try_advisory_lock(hashtext('atelier sessions schema')) AS ok"
                                   ).fetchone()["ok"]:
                if time.monotonic() > deadline:
                    raise CheckpointError(f"the sessions database {postgres_where(url)} is being set up by another "
                                          "process for over 2 minutes; try again")
                time.sleep(0.1)
            try:
                saver.setup()
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext('atelier sessions schema'))")
        return saver
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = sqlite_path(url)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    check_sqlite_file(path, "sessions")  # garbage or corrupt: one line naming the file, the file untouched
    conn = sqlite3.connect(path, check_same_thread=False)
    return guarded(SqliteSaver, path, conn)


@lru_cache(maxsize=None)
def _plain_index_saver(saver_cls: type) -> type:
    """LangGraph's Postgres saver with its migrations' `CREATE INDEX CONCURRENTLY` made plain.

    A concurrent build waits for every transaction open anywhere in the database to end, and the
    chat app's data layer (in the same database, on the same event loop as the first turn that
    opens the checkpointer) has its statements' transactions open while it waits: seen here, the
    first message of a chat app on Postgres hung until the test gave up. The indexes are built on
    first start, on empty tables, where a plain build takes milliseconds."""
    migrations = [m.replace("CREATE INDEX CONCURRENTLY", "CREATE INDEX") for m in saver_cls.MIGRATIONS]
    return type(f"PlainIndex{saver_cls.__name__}", (saver_cls,), {"MIGRATIONS": migrations})


class Atelier:
    """Everything a profile needs, built lazily and shared by every session of the process.

    `profile`: a name, a YAML path or a `Profile` (None: `$ATELIER_PROFILE`, else `offline`);
    `overrides`: nested fields over it; `planner`: a ChatModel instead of the profile's (tests).
    """

    def __init__(self, profile: str | Profile | None = None, overrides: dict[str, Any] | None = None,
                 *, planner: ChatModel | None = None):
        if isinstance(profile, Profile):
            self.profile = Profile.model_validate(_deep_merge(profile.model_dump(), overrides or {}))
        else:
            self.profile = load_profile(profile, overrides)
        self._planner = planner
        self._lock = threading.RLock()
        self._built: dict[str, Any] = {}

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._built:
                self._built[name] = make()
            return self._built[name]

    @property
    def store(self) -> ImageStore:
        return self._once("store", lambda: open_store(self.profile))

    @property
    def planner(self) -> ChatModel:
        def make() -> ChatModel:
            from agent.planners import build_planner

            return self._planner or build_planner(self.profile)

        return self._once("planner", make)

    @property
    def limiter(self):
        def make():
            from tools.safety import RateLimiter

            limits = self.profile.limits
            # None: a SQLite file under the data root, so every process on the root shares one quota
            return RateLimiter(limits.per_user, limits.storage or self.profile.store.ratelimits_url())

        return self._once("limiter", make)

    @property
    def services(self) -> Services:
        def make() -> Services:
            from tools.identity import FaceAnalyzer
            from tools.provenance import Sealer
            from agent.guard import screener_for
            from tools.safety import AuditLog, ImageScreener

            profile = self.profile
            key_dir = profile.provenance.key_dir or str(Path(profile.store.root) / "keys")
            analyzer = FaceAnalyzer(profile.identity)
            return Services(
                profile=profile, store=self.store, planner=self.planner,
                prompt_screener=screener_for(profile),
                image_screener=ImageScreener(profile.safety, analyzer),
                sealer=Sealer(profile.provenance, key_dir),
                audit=AuditLog(profile.store.audit_url()),
                analyzer=analyzer,
            )

        return self._once("services", make)

    @property
    def graph(self):
        return self._once("graph", lambda: build_graph(open_checkpointer(self.profile.store.sessions_url())))

    def images_for(self, user_id: str) -> OwnedImages:
        """The image store as `user_id` sees it: only their own versions resolve."""
        return self.store.scoped(user_id)

    def session(self, thread_id: str, user_id: str = LOCAL_USER, *, rate_key: str | None = None) -> Session:
        """`rate_key`: whose quota the session's requests count against (default: `user_id`; the
        HTTP API without keys passes the client's address, so clients do not share one quota)."""
        if not thread_id or not isinstance(thread_id, str):
            raise AtelierError("a session needs a thread id (any non-empty string)")
        return Session(self, thread_id, user_id, rate_key=rate_key)

    @property
    def leases(self):
        """One writer per thread across processes (see agent.leases), in the sessions database."""
        def make():
            from agent.leases import ThreadLeases

            limits = self.profile.limits
            return ThreadLeases(self.profile.store.sessions_url(), lease_s=limits.thread_lease_s,
                                wait_s=limits.thread_busy_wait_s)

        return self._once("leases", make)

    def close(self) -> None:
        with self._lock:
            planner = self._built.get("planner")
            if planner is not None and self._planner is None:
                planner.close()
            graph = self._built.get("graph")
            conn = getattr(getattr(graph, "checkpointer", None), "conn", None)
            if conn is not None:
                conn.close()
            for name in ("leases", "limiter"):
                built = self._built.get(name)
                if built is not None and hasattr(built, "close"):
                    built.close()
            self._built.clear()


class Session:
    """One conversation (`thread_id`) of one person (`user_id`).

    Threads are per user: the checkpoint and the image history live under `key` (the user and the
    thread id), so two users who pick the same thread id never see each other's conversation, and
    every image ref resolves only through `images`, the user's own view of the store.
    """

    def __init__(self, app: Atelier, thread_id: str, user_id: str = LOCAL_USER, *, rate_key: str | None = None):
        if not user_id or not isinstance(user_id, str):
            raise AtelierError("a session needs a user id (any non-empty string)")
        self.app = app
        self.thread_id = thread_id
        self.user_id = user_id
        self.rate_key = rate_key or user_id  # whose quota this session's requests count against
        self.key = thread_key(user_id, thread_id)
        self.images = app.images_for(user_id)
        self._cancel = threading.Event()
        self._worker: asyncio.Future | None = None  # the worker of the latest async turn
        self._fork: dict[str, Any] | None = None  # the checkpoint the next turn starts from (branch_from)

    # -- state ------------------------------------------------------------------------------
    @property
    def _config(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.key}, "recursion_limit": 200}

    def _snapshot(self):
        return self.app.graph.get_state(self._config)

    @property
    def pending_consent(self) -> ConsentQuestion | None:
        """The consent question the turn is waiting on, or None."""
        snap = self._snapshot()
        return ConsentQuestion.model_validate(snap.interrupts[0].value) if snap.interrupts else None

    @property
    def current(self) -> str | None:
        """The image the next turn works on (where a pending `branch_from` starts, if any)."""
        snap = self.app.graph.get_state(self._fork) if self._fork else self._snapshot()
        return snap.values.get("current")

    def history(self) -> list[ImageVersion]:
        """Every image version of this session, oldest first (a tree through `parent`)."""
        return self.images.history(self.key)

    def facts(self):
        """The chat's versions, numbered as every answer and list names them (agent.resolver.Facts)."""
        from agent.resolver import Facts

        return Facts.of(self.history(), self.current)

    def timeline(self) -> list[VersionEntry]:
        """Every version of this chat, oldest first, as a Versions list shows it: its number, what
        made it in words ("relit: warm light from the left"), the version it came from."""
        from agent.answers import version_words

        facts = self.facts()
        return [VersionEntry(ref=v.ref, number=i, made=version_words(v, facts), parent=v.parent,
                             parent_number=facts.number(v.parent) if v.parent else None,
                             current=v.ref == facts.current)
                for i, v in enumerate(facts.versions, 1)]

    def image_line(self, ref: str) -> str:
        """The compact line under one of this chat's images (its number, size and what made it),
        for an image shown outside a turn (a reopened chat, undo, branch)."""
        from agent.answers import version_words

        facts = self.facts()
        version, stored = facts.get(ref), self.version(ref)
        made = version_words(version, facts) if version else ""
        parts = [facts.label(ref), f"{stored.width}×{stored.height}", made]
        return " · ".join(p for p in parts if p)

    # -- images (surfaces reach stored images only through these: the user's own) ---------------
    def version(self, ref: str) -> ImageVersion:
        """A stored version of this user's (UnknownRefError for anyone else's, as for a missing one)."""
        return self.images.get(ref)

    def image_path(self, ref: str) -> str:
        """A local file of one of this user's versions (for serving or attaching)."""
        return self.images.local_path(ref)

    def image_bytes(self, ref: str) -> bytes:
        return self.images.read_bytes(ref)

    def verify(self, ref: str) -> dict[str, Any]:
        """Watermark and content credentials of one of this user's images, read with this
        profile's keys and watermark registry (`tools.provenance.verify_bytes`)."""
        from tools.provenance import verify_bytes

        data = self.image_bytes(ref)
        sealer = self.app.services.sealer
        return verify_bytes(data, key_dir=sealer.key_dir, registry=sealer.registry,
                            watermark_key=sealer.settings.watermark_key)

    def _count_request(self) -> None:
        """Count one request against the rate key's quota; a refusal (RateLimitedError) is written
        to the audit log, where `atelier audit` reports it per user, before it is raised."""
        from tools.errors import RateLimitedError

        try:
            self.app.limiter.hit(self.rate_key)
        except RateLimitedError as err:
            self.app.services.audit.record("rate_limited", user_id=self.user_id, thread_id=self.key,
                                           rate_key=self.rate_key, retry_after=err.retry_after, message=str(err))
            raise

    def upload(self, data: ImageInput, *, filename: str | None = None) -> ImageVersion:
        """Bring an image into this conversation without a turn (MCP `upload_image`, API uploads):
        the same checks as an upload sent with a message (rate limit, validation, the upload
        screen, the audit log). A refused image is not stored (`RefusedError`)."""
        from tools.store import decode_upload, upload_name

        self._count_request()
        if isinstance(data, NamedImage):
            data, filename = data.data, filename or data.filename
        if isinstance(data, str) and is_ref(data):
            return self.version(self._ingest(data))
        if isinstance(data, (str, os.PathLike)):
            from tools.store import read_upload_file

            filename = filename or Path(data).name or os.fspath(data)
            data = read_upload_file(data, self.images.limits, name=upload_name(filename))  # bounded, regular files only
        if not isinstance(data, (bytes, bytearray)):
            raise BadImageError(f"cannot read an image from a {type(data).__name__}")
        name = upload_name(filename)
        filename = Path(filename).name if filename else None
        image = decode_upload(bytes(data), self.images.limits, name=name)
        services = self.app.services
        decision = services.image_screener.screen(image)
        record = decision.model_dump(mode="json") if hasattr(decision, "model_dump") else vars(decision)
        try:
            services.audit.record("upload_screen", user_id=self.user_id, thread_id=self.key,
                                  filename=filename, decision=record)
        except Exception:  # noqa: BLE001 - the audit log never breaks an upload
            log.exception("audit log write failed (upload_screen)")
        if decision.decision == "refuse":
            raise RefusedError(f"{name}: this image cannot be used here ({decision.reason})",
                               category=decision.category)
        return self.images.ingest(bytes(data), filename=filename, session=self.key)

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI-style messages (what the planner's history is built from)."""
        return list(self._snapshot().values.get("messages") or [])

    def user_turns(self) -> list[str]:
        """What the person wrote in each turn of the conversation, oldest first."""
        return _user_texts(self.messages())

    def branch_from(self, turns: int) -> None:
        """Make the next turn start where the conversation stood after its first `turns` user turns
        (0: the start), as a new branch: a chat app's Regenerate or an edited earlier message. The
        turns after that point stay in the checkpoints and their images in the version tree; the
        new turn works on the image that was current then, so its result branches from it."""
        snap = self._snapshot()
        if len(_user_texts(snap.values.get("messages") or [])) <= turns:
            self._fork = None  # nothing to go back over
            return
        while snap is not None and snap.config:
            messages = snap.values.get("messages") or []
            finished = not snap.next or (not messages and turns == 0)
            if finished and not snap.interrupts and len(_user_texts(messages)) == turns:
                self._fork = snap.config
                return
            parent = snap.parent_config
            snap = self.app.graph.get_state(parent) if parent else None
        raise AtelierError(f"this chat has no saved point after {turns} turn(s) to branch from")

    def cancel(self) -> None:
        """Stop long work: the engine stops at its next step and the turn ends."""
        self._cancel.set()

    # -- turns ------------------------------------------------------------------------------
    def stream(self, text: str, images: list[ImageInput] | None = None) -> Iterator[TurnEvent]:
        """Run a turn, yielding events. Rate limits, uploads and slash commands are checked
        before the first event (they raise)."""
        return self._run(self._prepared(text, images))

    def _prepared(self, text: str, images: list[ImageInput] | None) -> dict[str, Any]:
        """The turn's input; a request that fails before it runs drops a pending `branch_from`,
        so it never carries over to a later, ordinary turn."""
        try:
            return self._turn_input(text, images)
        except BaseException:
            self._fork = None
            raise

    def send(self, text: str, images: list[ImageInput] | None = None) -> TurnResult:
        return _last_result(self.stream(text, images))

    def call_tool(self, name: str, args: dict[str, Any]) -> TurnResult:
        """Run one tool through the same screens, seal and audit, without the planner."""
        return _last_result(self._run(self._call_input(name, args)))

    def astream_call(self, name: str, args: dict[str, Any]) -> AsyncIterator[TurnEvent]:
        """`call_tool` as a stream of events (a chat's "try again" button shows its progress)."""
        inp = self._call_input(name, args)  # raises before any event, like astream()
        return self._aiterate(lambda: self._run(inp))

    def _call_input(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        for key, value in (args or {}).items() if isinstance(args, dict) else ():
            if isinstance(value, str):
                self._check_length(value, f"{name}: {key}")
        self._count_request()
        self._decline_pending()
        call = ToolCall(name, dict(args or {}))
        text = f"/{name} {json.dumps(call.args, ensure_ascii=False)}"
        return self._direct_input(text, call, [])

    def resume(self, approved: bool) -> TurnResult:
        """Answer the pending consent question and finish the turn."""
        return _last_result(self.stream_resume(approved))

    def stream_resume(self, approved: bool) -> Iterator[TurnEvent]:
        self._fork = None  # an answer to a question continues the turn it asked in
        if self.pending_consent is None:
            raise AtelierError("there is no question waiting for an answer in this session")
        return self._run(Command(resume=bool(approved)))

    # -- async ------------------------------------------------------------------------------
    def astream(self, text: str, images: list[ImageInput] | None = None) -> AsyncIterator[TurnEvent]:
        inp = self._prepared(text, images)  # raises before any event, like stream()
        return self._aiterate(lambda: self._run(inp))

    async def asend(self, text: str, images: list[ImageInput] | None = None) -> TurnResult:
        return await asyncio.to_thread(self.send, text, images)

    async def aresume(self, approved: bool) -> TurnResult:
        return await asyncio.to_thread(self.resume, approved)

    def astream_resume(self, approved: bool) -> AsyncIterator[TurnEvent]:
        self._fork = None
        if self.pending_consent is None:
            raise AtelierError("there is no question waiting for an answer in this session")
        return self._aiterate(lambda: self._run(Command(resume=bool(approved))))

    async def acall_tool(self, name: str, args: dict[str, Any]) -> TurnResult:
        return await asyncio.to_thread(self.call_tool, name, args)

    async def _aiterate(self, make: Callable[[], Iterator[TurnEvent]]) -> AsyncIterator[TurnEvent]:
        """Run a sync event iterator in a worker thread and hand its events to the loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        finished = object()

        def worker() -> None:
            try:
                for event in make():
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, err)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, finished)

        task = loop.run_in_executor(None, worker)
        self._worker = task
        done = stopped = False
        try:
            while True:
                item = await queue.get()
                if item is finished:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        except asyncio.CancelledError:
            stopped = True
            raise
        finally:
            if not done:  # the consumer went away (stop, closed stream, disconnect): stop the work
                self.cancel()
            if not stopped:
                await task
            # A cancelled consumer (the stop button) ends now: the worker stops at its next step
            # (a denoising step, a planner token) and ends the turn as stopped; `wait_stopped`
            # waits for it, and the next turn of the thread waits for its lease anyway.

    @property
    def stopping(self) -> bool:
        """A stopped turn's work is still ending (its engine or planner has not reached its next step)."""
        worker = self._worker
        return worker is not None and not worker.done()

    async def wait_stopped(self) -> None:
        """Wait until the work of a stopped turn has ended (returns at once when none runs)."""
        worker = self._worker
        if worker is not None and not worker.done():
            await asyncio.wait([worker])

    # -- internals --------------------------------------------------------------------------
    def _check_length(self, text: str, what: str = "the message") -> None:
        """Refuse a text over `limits.max_prompt_chars` before any work (screens, slash parsing,
        the checkpoint): every surface's turn passes here."""
        limit = self.app.profile.limits.max_prompt_chars
        if len(text) > limit:
            raise PromptTooLongError(f"{what} is {len(text):,} characters long; the limit is {limit:,}: "
                                     "shorten it and send it again")

    def _turn_input(self, text: str, images: list[ImageInput] | None) -> dict[str, Any]:
        text = (text or "").strip()
        self._check_length(text)
        limit = self.app.profile.limits.max_images_per_turn
        if len(images or []) > limit:
            raise BadImageError(f"{len(images)} images in one message; the limit is {limit}")
        self._count_request()
        refs = [self._ingest(item) for item in images or []]
        self._decline_pending()
        if is_slash(text):
            name, args = parse_slash(text, current=refs[-1] if refs else self.current, store=self.images)
            return self._direct_input(text, ToolCall(name, args), refs)
        if not text and not refs:
            raise AtelierError("say something, or attach an image")
        user: dict[str, Any] = {"role": "user", "content": text}
        if refs:
            user["images"] = refs
        return {"messages": [user], "direct": False, "queue": []}

    def _decline_pending(self) -> None:
        """A new message or call while a question is open answers it with "no" first."""
        if self.pending_consent is not None:
            try:
                _last_result(self._run(Command(resume=False)))
            except AtelierError:
                if self.pending_consent is not None:  # still waiting: a real failure
                    raise

    def _direct_input(self, text: str, call: ToolCall, refs: list[str]) -> dict[str, Any]:
        user: dict[str, Any] = {"role": "user", "content": text}
        if refs:
            user["images"] = refs
        stored = call.as_dict()  # arguments a checkpoint can hold (validated by screen_call)
        pending = PendingCall(id=stored["id"], name=stored["name"], args=stored["args"])
        return {"messages": [user, assistant_message("", [pending])], "direct": True,
                "queue": [pending.model_dump(mode="json")]}

    def _ingest(self, item: ImageInput) -> str:
        store = self.images
        filename = None
        if isinstance(item, NamedImage):  # the same paths, with the name the person gave it
            item, filename = item.data, item.filename
        if isinstance(item, str) and is_ref(item):
            version = store.get(item)  # UnknownRefError when it is not there, or not this user's
            if version.session != self.key and item not in {v.ref for v in self.history()}:
                store.put(store.read_bytes(item), session=self.key)  # list it in this session
            return item
        if isinstance(item, (bytes, bytearray)):
            return store.ingest(bytes(item), filename=filename, session=self.key).ref
        if isinstance(item, (str, os.PathLike)):
            return store.ingest(item, filename=filename, session=self.key).ref
        raise BadImageError(f"cannot read an image from a {type(item).__name__}")

    def _run(self, inp: Any) -> Iterator[TurnEvent]:
        graph = self.app.graph
        # one writer per thread across processes: a lease in the sessions database (ThreadBusyError
        # after `limits.thread_busy_wait_s`), renewed while the turn runs
        with self.app.leases.hold(self.key):
            if isinstance(inp, Command) and self.pending_consent is None:
                # answered meanwhile (another replica, a retried "yes"): nothing is waiting any more
                raise AtelierError("there is no question waiting for an answer in this session")
            self._cancel.clear()
            ctx = TurnContext(services=self.app.services, user_id=self.user_id, thread_id=self.key,
                              cancel=self._cancel)
            failure: TurnError | None = None
            before = self._checkpoint_id()
            config = self._config
            if not isinstance(inp, Command):  # (declining an open question first keeps the branch point)
                fork, self._fork = self._fork, None  # used by this turn only, whatever happens to it
                if fork is not None:
                    config = {**self._config, "configurable": dict(fork["configurable"])}  # a new branch
            try:
                for mode, chunk in graph.stream(inp, config, context=ctx,
                                                stream_mode=["custom", "updates"]):
                    if mode == "custom":
                        yield chunk  # a TurnEvent (agent.graph emits them typed)
                    elif "__interrupt__" in chunk:
                        yield ConsentEvent.model_validate(chunk["__interrupt__"][0].value)
            except AtelierError as err:  # e.g. CheckpointError: the turn could not be saved
                failure = TurnError(code=err.code, message=str(err), http_status=err.http_status)
            except Exception as err:  # noqa: BLE001 - a crash ends the turn with a message
                log.exception("turn failed (thread %s)", self.thread_id)
                failure = TurnError(code="internal_error", message=f"something went wrong: {type(err).__name__}: {err}",
                                    http_status=500)
            snap = None
            if failure is None:
                snap = self._snapshot()
                if snap.config["configurable"].get("checkpoint_id") == before:
                    failure = TurnError(code="checkpoint_failed", http_status=503,
                                        message="this turn was not saved to the sessions database; its answer was not "
                                                "kept — send the message again")
            if failure is not None:
                # the checkpoint still holds the previous turn: nothing of it is this turn's result
                result = TurnResult(thread_id=self.thread_id, answer=failure.message.splitlines()[0], error=failure)
            else:
                result = self._result(snap)
            if result.answer:
                yield AnswerEvent(text=result.answer)
            if result.error:
                yield ErrorEvent(**result.error.model_dump())
            yield DoneEvent(result=result)

    def _checkpoint_id(self) -> str | None:
        """The id of the thread's latest checkpoint (None: a new thread)."""
        saved = self.app.graph.checkpointer.get_tuple(self._config)
        return saved.config["configurable"].get("checkpoint_id") if saved else None

    def _result(self, snap=None) -> TurnResult:
        snap = snap if snap is not None else self._snapshot()
        state = TurnState.model_validate(snap.values)
        from agent.answers import followups, result_line
        from agent.resolver import Facts

        facts = Facts.of(self.history(), state.current)
        images = []
        for ref in state.images:
            version = self.images.get(ref)
            made_by = next((r for r in reversed(state.calls) if ref in r.result.images), None)
            images.append(OutputImage(ref=ref, path=self.images.local_path(ref), width=version.width,
                                      height=version.height, number=facts.number(ref),
                                      line=result_line(made_by, facts, ref) if made_by else ""))
        return TurnResult(
            thread_id=self.thread_id,
            answer=state.answer,
            tool_calls=state.calls,
            images=images,
            consent=ConsentQuestion.model_validate(snap.interrupts[0].value) if snap.interrupts else None,
            refused=state.refused,
            error=state.error,
            planner_calls=state.planner_calls,
            usage=Usage(prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens),
            followups=followups(state.calls, facts),
        )


def thread_key(user_id: str, thread_id: str) -> str:
    """Where a user's thread lives in the checkpointer and the store. The local user's threads
    keep their bare ids (so threads made before users existed still open); anyone else's are
    `@<user>/<thread>`, the user percent-quoted, so no user id and thread id pair spells another
    user's key (a local thread id that starts with `@` is put under `@local/` too)."""
    from urllib.parse import quote

    if user_id == LOCAL_USER and not thread_id.startswith("@"):
        return thread_id
    return f"@{quote(user_id, safe='')}/{thread_id}"


def _user_texts(messages: list[dict[str, Any]]) -> list[str]:
    from agent.prompting import REPAIR_FLAG

    return [str(m.get("content") or "").strip() for m in messages if m.get("role") == "user" and not m.get(REPAIR_FLAG)]


def _last_result(events: Iterator[TurnEvent]) -> TurnResult:
    result = None
    for event in events:
        if event.kind == "done":
            result = event.result
    assert result is not None, "a turn always ends with a done event"
    return result
