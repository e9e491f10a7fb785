"""OpenAI-compatible HTTP surface: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/files/{ref}`,
and OpenAI's Images API (`POST /v1/images/generations`, `POST /v1/images/edits`: `ui/images_api.py`).

A thin adapter over `agent.Atelier` sessions, so Open WebUI, LibreChat or any OpenAI client can use
Atelier as a "model". The rules it follows (also in the README):

- **Users.** `Authorization: Bearer <key>` maps to a user id (keys from `--api-keys FILE` or
  `$ATELIER_API_KEYS`); rate limits and the audit log use that id. With no keys configured the
  server is for local use and everyone is user `local`, but rate limits count per client address
  (`addr:<host>`). Quotas live under the data root, shared by every server process on it.
- **Threads.** A conversation maps to one Atelier thread. An explicit id wins
  (`metadata.thread_id` in the body, the `X-Atelier-Thread` header, or the `X-OpenWebUI-Chat-Id`
  header Open WebUI forwards when `ENABLE_FORWARD_USER_INFO_HEADERS=true`; with keys configured it
  becomes `<user id>/<thread id>`, so one key never reaches another's thread); otherwise the id is derived
  from the user id, the request's `user` field and the first user message of the conversation,
  which chat apps resend unchanged with every turn: `oai-` + sha256(...)[:24]. Only the last user
  message of a request is new; the earlier ones are already in the thread.
- **Images in.** Content parts of type `image_url` with `data:` URLs are decoded and ingested
  through the session (the store validates them). Remote `http(s)` URLs are refused with a 400
  unless the server was started with `--allow-remote-images`; then only public addresses are
  fetched (`ui.remote_images`: every hop checked, one deadline, the upload size cap, one error text).
- **Limits.** A body over `limits.max_request_bytes` is a 413 before it is parsed; a body with
  NaN or Infinity is a 400; a message over `limits.max_prompt_chars` is a 400 (`prompt_too_long`).
- **Images out.** The answer is markdown; every image is a link to `GET /v1/files/{ref}`. When keys
  are configured the link carries a signature (`?sig=`) so a browser can show it without the key.
- **Errors** use OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with 400 (bad
  input, corrupt data URL), 401 (bad key), 404 (unknown ref or model), 409 (`thread_busy`: another
  request still runs a turn of this conversation), 413 (body too large), 429 (rate limit, with
  `Retry-After`), 503 (`checkpoint_failed`: the turn could not be saved; `bad_database`: a data
  file SQLite cannot read). A turn that failed as a whole is never a 200 with an older answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.turn import DoneEvent, ProgressEvent, StatusEvent, ToolStartEvent
from tools.errors import AtelierError, BadImageError, RateLimitedError, UnknownRefError
from tools.schemas import is_ref
from tools.store import LOCAL_USER

log = logging.getLogger(__name__)

MAX_CACHED_SESSIONS = 512
# Headers that name the conversation explicitly: ours, and the chat id Open WebUI forwards when
# ENABLE_FORWARD_USER_INFO_HEADERS is on (exact mapping even when the first message repeats).
THREAD_HEADERS = ("x-atelier-thread", "x-openwebui-chat-id")


# -- request / response models (the subset of OpenAI's chat API that chat apps send) -------------


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p... are accepted and ignored

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    user: str | None = None
    metadata: dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error", 499: "cancelled", 503: "service_unavailable"}


def api_error_from(err: AtelierError) -> ApiError:
    status = getattr(err, "http_status", 400) or 400
    headers = {}
    if isinstance(err, RateLimitedError):
        headers["Retry-After"] = str(max(1, int(round(err.retry_after + 0.499))))
    return ApiError(status, str(err), type=_ERROR_TYPES.get(status, "server_error" if status >= 500 else
                                                             "invalid_request_error"),
                    code=err.code, headers=headers)


# -- request bodies: size and strict JSON -----------------------------------------------------


class RequestBodyLimit:
    """Pure ASGI middleware: a request body over `max_bytes` is answered 413 before it is parsed.

    A declared `Content-Length` over the limit is refused at once, without reading a byte; a
    chunked (or lying) body is counted as it streams in and cut at the first chunk over the limit.
    The app then reads a disconnect, and whatever it answers after the cut is dropped."""

    def __init__(self, app, max_bytes: int, keys: dict[str, str] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.keys = dict(keys or {})

    def _keyless(self, scope) -> bool:
        """A request with a body but no valid key, on a server with keys: answered 401 before the
        body is read (signed image links are GETs without a body and pass)."""
        if not self.keys or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return False
        header = next((v for k, v in scope.get("headers") or () if k == b"authorization"), b"")
        return key_user(self.keys, bearer_token(header)) is None

    def _too_large(self) -> JSONResponse:
        response = ApiError(413, f"request body over this server's {self.max_bytes / 2**20:.3g} MB limit",
                            code="request_too_large").response()
        response.headers["Connection"] = "close"
        return response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._keyless(scope):
            response = ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)",
                                type="authentication_error", code="invalid_api_key").response()
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        declared = next((v for k, v in scope.get("headers") or () if k == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            return await self._too_large()(scope, receive, send)
        received, started, cut = 0, False, False

        async def counted_receive():
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body") or b"")
                if received > self.max_bytes:
                    cut = True
                    if not started:
                        await self._too_large()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if cut:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not cut:
                raise


class _NonFiniteNumber(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise _NonFiniteNumber(text)
    return value


def strict_json_loads(body: bytes | str) -> Any:
    """`json.loads` that refuses NaN, Infinity and numbers too large for a float (1e400), which
    Python's json accepts but JSON (RFC 8259) does not; raises `_NonFiniteNumber` for them."""
    return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = strict_json_loads(await self.body())
        return self._strict_json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body may not hold NaN or infinities: such a body is a 400 in OpenAI's
    shape, before the body model is validated (so nothing non-finite reaches a session or an answer)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            request = _StrictJSONRequest(request.scope, request.receive)
            if request.method in ("POST", "PUT", "PATCH") and await request.body():
                try:
                    await request.json()  # parsed once: FastAPI then reads this result
                except _NonFiniteNumber as err:
                    return ApiError(400, f"invalid request: {str(err)[:40]} is not a JSON number (NaN, "
                                    "Infinity and out-of-range numbers are not allowed)").response()
                except (ValueError, RecursionError):
                    pass  # malformed JSON: FastAPI reports it as usual
            return await handler(request)

        return route


# -- configuration ------------------------------------------------------------------------------


def load_api_keys(path: str | os.PathLike | None = None, spec: str | None = None) -> dict[str, str]:
    """API key -> user id.

    `path`: a YAML file mapping keys to user ids (`sk-abc: alice`). `spec`: `key=user,key2=user2`
    (the form of `$ATELIER_API_KEYS`); a key without `=user` gets the user id `key-<sha8>`.
    """
    keys: dict[str, str] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise BadConfigError(f"cannot read API key file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise BadConfigError(f"API key file {path} is not valid YAML ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("keys"), dict):
            data = data["keys"]
        if not isinstance(data, dict):
            raise BadConfigError(f"API key file {path} must map keys to user ids (sk-abc: alice)")
        keys.update({str(k): str(v) for k, v in data.items()})
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, user = item.partition("=")
        keys[key.strip()] = user.strip() or "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    for key, user in keys.items():
        if user == LOCAL_USER:
            raise BadConfigError(f"API key user id {LOCAL_USER!r} is reserved for the local modes (chat app, CLI, "
                                 "stdio MCP): give the key another user id")
        if len(key) < 8:
            raise BadConfigError(f"API key for {user!r} is too short (at least 8 characters)")
    return keys


def bearer_token(header: str | bytes | None) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" when there is none)."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def key_user(keys: dict[str, str], token: str) -> str | None:
    """The user of an API key (compared in constant time), or None. One check for every way in:
    the HTTP API, its body-limit middleware and the MCP server's token verifier."""
    for key, user in keys.items():
        if token and hmac.compare_digest(token.encode(), key.encode()):
            return user
    return None


class BadConfigError(AtelierError):
    code = "bad_config"


class ServerOptions(BaseModel):
    api_keys: dict[str, str] = Field(default_factory=dict)
    allow_remote_images: bool = False
    remote_image_timeout_s: float = 20.0  # one deadline per image: DNS, connect, redirects and body
    # CIDRs a remote image may come from although they are not public (an intranet image host);
    # everything else that is not globally routable is refused (see ui/remote_images.py)
    remote_image_allowed_networks: list[str] = Field(default_factory=list)

    @field_validator("remote_image_allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        from ui.remote_images import parse_networks

        try:
            parse_networks(value)
        except ValueError as err:
            raise ValueError(f"not a network in CIDR form ({err})") from None
        return value
    public_url: str | None = None  # base of image links; None: the request's own base URL
    link_ttl_s: int = 30 * 24 * 3600  # how long a signed image link works (chat apps keep them in history)


def _consent_replies() -> dict[str, set[str]]:
    raw = yaml.safe_load((resources.files("configs") / "api" / "consent_replies.yaml").read_text())
    return {k: {w.lower() for w in v} for k, v in raw.items()}


def _background_tasks() -> dict[str, Any]:
    return yaml.safe_load((resources.files("configs") / "api" / "background_tasks.yaml").read_text())


def consent_answer(text: str, replies: dict[str, set[str]]) -> bool | None:
    """True/False when `text` reads as a yes/no answer to a consent question, else None."""
    words = " ".join(text.lower().replace(",", " ").split()).strip(" .!?")
    if words in replies["yes"]:
        return True
    if words in replies["no"]:
        return False
    return None


# -- the adapter -------------------------------------------------------------------------------


class ChatAdapter:
    """Maps OpenAI requests onto Atelier sessions (one per thread and user)."""

    def __init__(self, atelier, options: ServerOptions, secret: bytes):
        self.atelier = atelier
        self.options = options
        self.secret = secret
        self.model_id = f"atelier-{atelier.profile.name}"
        self._sessions: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._guard = threading.Lock()
        self._replies = _consent_replies()
        self._tasks = _background_tasks()
        self._texts = yaml.safe_load((resources.files("prompts") / "api.yaml").read_text(encoding="utf-8"))

    # users and threads
    def user_for(self, request: Request) -> str:
        keys = self.options.api_keys
        token = bearer_token(request.headers.get("authorization"))
        if not keys:
            return LOCAL_USER
        user = key_user(keys, token)
        if user is not None:
            return user
        raise ApiError(401, "missing API key (Authorization: Bearer <key>)" if not token else "invalid API key",
                       type="authentication_error", code="invalid_api_key")

    def thread_for(self, body: ChatCompletionRequest, user_id: str, header: str | None) -> str:
        explicit = header or (body.metadata or {}).get("thread_id")
        if explicit:
            explicit = str(explicit)
            if not (0 < len(explicit) <= 200) or not explicit.isprintable():
                raise ApiError(400, "thread_id must be 1-200 printable characters", param="metadata.thread_id")
            # with keys, a named thread lives in the key's own namespace: nobody reaches another's thread
            return f"{user_id}/{explicit}" if self.options.api_keys else explicit
        first = next(m for m in body.messages if m.role == "user") if any(
            m.role == "user" for m in body.messages) else body.messages[0]
        seed = json.dumps([user_id, body.user or "", _fingerprint(first)], ensure_ascii=False)
        return "oai-" + hashlib.sha256(seed.encode()).hexdigest()[:24]

    def session(self, thread_id: str, user_id: str, rate_key: str | None = None):
        """The cached session of a thread, user and rate-limit key, and the thread's turn lock."""
        key = (thread_id, user_id, rate_key or user_id)
        with self._guard:
            s = self._sessions.get(key)
            if s is None:
                s = self.atelier.session(thread_id, user_id=user_id, rate_key=rate_key)
                self._sessions[key] = s
                while len(self._sessions) > MAX_CACHED_SESSIONS:
                    old, _ = self._sessions.popitem(last=False)
                    self._locks.pop(old[:2], None)
            else:
                self._sessions.move_to_end(key)
            lock = self._locks.setdefault(key[:2], asyncio.Lock())  # one turn at a time per thread
        return s, lock

    def rate_key_for(self, request: Request) -> str | None:
        """Whose quota a request counts against: the key's user (None) when keys are configured,
        else the client's address, so local clients without keys do not share one quota."""
        if self.options.api_keys:
            return None
        host = request.client.host if request.client else None
        return f"addr:{host or 'unknown'}"

    # messages
    async def last_user_turn(self, body: ChatCompletionRequest) -> tuple[str, list[bytes]]:
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise ApiError(400, "the conversation has no user message", param="messages")
        message = users[-1]
        if message.content is None:
            return "", []
        if isinstance(message.content, str):
            return strip_client_wrappers(message.content), []
        texts, images = [], []
        limit = self.atelier.profile.limits.max_images_per_turn
        count = sum(1 for part in message.content if part.type in ("image_url", "input_image"))
        if count > limit:  # before any image is decoded or fetched
            raise ApiError(400, f"{count} images in one message; the limit is {limit}", code="too_many_images",
                           param="messages")
        for i, part in enumerate(message.content):
            if part.type in ("text", "input_text"):
                texts.append(part.text or "")
            elif part.type in ("image_url", "input_image"):
                url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
                if not url:
                    raise ApiError(400, f"content part {i}: image_url.url is missing", param="messages")
                images.append(await self.image_bytes(url, index=len(images) + 1))
            else:
                raise ApiError(400, f"content part {i}: type {part.type!r} is not supported "
                               "(use text and image_url)", param="messages")
        return strip_client_wrappers("\n".join(t for t in texts if t)), images

    async def image_bytes(self, url: str, *, index: int) -> bytes:
        name = f"image {index}"
        if url.startswith("data:"):
            header, comma, payload = url.partition(",")
            if not comma:
                raise ApiError(400, f"{name}: malformed data URL (no comma)", code="bad_image", param="messages")
            if not header.endswith(";base64"):
                raise ApiError(400, f"{name}: data URLs must be base64-encoded", code="bad_image", param="messages")
            try:
                return base64.b64decode(payload.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, f"{name}: the data URL is not valid base64", code="bad_image",
                               param="messages") from None
        if url.startswith(("http://", "https://")):
            if not self.options.allow_remote_images:
                raise ApiError(400, f"{name}: remote image URLs are not fetched by this server; send the image "
                               "as a data URL (or start it with --allow-remote-images)", code="remote_image_disabled",
                               param="messages")
            return await self._fetch(url, name)
        raise ApiError(400, f"{name}: unsupported image URL scheme (use a data: URL)", code="bad_image",
                       param="messages")

    async def _fetch(self, url: str, name: str) -> bytes:
        """A remote image, from public addresses only (or the operator's allowed networks); every
        failure is the same 400 line, so the fetcher cannot be used to probe the server's network."""
        from ui.remote_images import RemoteImageError, fetch_remote_image

        try:
            return await fetch_remote_image(
                url, max_bytes=self.atelier.profile.limits.max_upload_bytes,
                deadline_s=self.options.remote_image_timeout_s,
                allowed_networks=self.options.remote_image_allowed_networks, name=name)
        except RemoteImageError as err:
            raise ApiError(400, str(err), code=err.code, param="messages") from None

    # images out
    def _mac(self, *parts: str) -> str:
        return hmac.new(self.secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def user_tag(self, user: str) -> str:
        """An opaque name of a user in links (the user id itself stays out of URLs)."""
        return self._mac("user", user)[:16]

    def sign(self, ref: str, user: str, expires: int) -> str:
        return self._mac("file", ref, user, str(expires))

    def file_url(self, ref: str, base: str, user: str) -> str:
        """The link to one of `user`'s images. With keys it is signed for that user and expires
        (`link_ttl_s`), so a browser can show it without the key and nobody else's link works."""
        base = (self.options.public_url or base).rstrip("/")
        url = f"{base}/v1/files/{ref}"
        if not self.options.api_keys:
            return url
        expires = int(time.time()) + int(self.options.link_ttl_s)
        return url + f"?u={self.user_tag(user)}&exp={expires}&sig={self.sign(ref, user, expires)}"

    def link_user(self, ref: str, tag: str | None, exp: str | None, sig: str | None) -> str | None:
        """The user a signed link was made for, or None when it is not a valid, unexpired link."""
        if not (tag and exp and sig) or not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
            return None
        if int(exp) < time.time() or not (tag.isascii() and sig.isascii()):
            return None
        for user in set(self.options.api_keys.values()):
            if hmac.compare_digest(tag.encode(), self.user_tag(user).encode()) and hmac.compare_digest(
                    sig.encode(), self.sign(ref, user, int(exp)).encode()):
                return user
        return None

    def render(self, result, base: str, user: str) -> str:
        """The markdown answer: the agent's words, then each image as a link to /v1/files."""
        parts = [result.answer.strip()] if result.answer and result.answer.strip() else []
        if result.consent is not None:  # the turn waits: the next user message answers (yes/no)
            question = result.consent.question
            if question and question not in parts:
                parts.append(self._texts["consent"].format(question=question))
        for image in result.images:
            parts.append(f"![{image.ref}]({self.file_url(image.ref, base, user)})")
        if not parts and result.error is not None:
            parts.append(result.error.message or "something went wrong")
        return "\n\n".join(parts)

    # turns
    def check_model(self, body: ChatCompletionRequest) -> None:
        if body.model not in (self.model_id, self.atelier.profile.name):
            raise ApiError(404, f"model {body.model!r} does not exist; this server serves {self.model_id!r}",
                           type="not_found_error", code="model_not_found", param="model")

    async def prepare(self, body: ChatCompletionRequest, request: Request):
        self.check_model(body)
        user_id = self.user_for(request)
        header = next((request.headers[h] for h in THREAD_HEADERS if request.headers.get(h)), None)
        thread_id = self.thread_for(body, user_id, header)
        text, images = await self.last_user_turn(body)
        session, lock = self.session(thread_id, user_id, self.rate_key_for(request))
        return session, lock, text, images

    def background_task_reply(self, body: ChatCompletionRequest) -> str | None:
        """The canned reply to a chat app's own background request (titles, tags...), else None."""
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            return None
        content = users[-1].content
        text = content if isinstance(content, str) else " ".join(p.text or "" for p in content or [])
        if any(text.lstrip().startswith(prefix) for prefix in self._tasks["prefixes"]):
            return str(self._tasks["reply"])
        return None

    async def branch(self, session, earlier: list[str] | None, text: str) -> None:
        if earlier is None:
            return
        point = await asyncio.to_thread(self.branch_point, session, earlier, text)
        if point is not None:
            try:
                await asyncio.to_thread(session.branch_from, point)
            except AtelierError as err:
                raise api_error_from(err) from None

    def consent_reply(self, session, text: str, images: list[bytes]) -> bool | None:
        if images or session.pending_consent is None:
            return None
        return consent_answer(text, self._replies)

    def earlier_turns(self, body: ChatCompletionRequest) -> list[str]:
        """The user turns a request resends before its last one, as the thread stores them."""
        texts = []
        for message in [m for m in body.messages if m.role == "user"][:-1]:
            content = message.content
            text = content if isinstance(content, str) else "\n".join(
                p.text or "" for p in content or [] if p.type in ("text", "input_text") and p.text)
            texts.append(strip_client_wrappers(text or ""))
        return texts

    def branch_point(self, session, earlier: list[str], text: str) -> int | None:
        """Where a resent conversation leaves the thread: chat apps branch (Regenerate, an edited
        earlier message) by resending the conversation up to that point. When the thread holds more
        turns than the request's history and that history matches the thread's first turns, the new
        turn runs from there (None: append as usual). A client that sends only its last message
        (no history) appends, unless that message is the thread's first turn again (regenerate)."""
        thread = session.user_turns()
        n = len(earlier)
        if n >= len(thread) or thread[:n] != earlier:
            return None
        if n == 0 and text.strip() != thread[0]:
            return None
        return n

    async def complete(self, session, lock, text: str, images: list[bytes], earlier: list[str] | None = None):
        async with lock:
            await self.branch(session, earlier, text)
            approved = await asyncio.to_thread(self.consent_reply, session, text, images)
            try:
                if approved is not None:
                    result = await asyncio.to_thread(session.resume, approved)
                else:
                    result = await session.asend(text, images=images)
            except AtelierError as err:
                raise api_error_from(err) from None
        raise_failed_turn(result)
        return result


# What chat apps wrap around the user's words: Open WebUI puts `<attached_files>...</attached_files>`
# (the uploads it also sends as image parts) before the text. Stripped before the screens and the
# slash-command parser see the message, so "/adjust exposure=+1" with an upload is still a command.
CLIENT_WRAPPERS = (re.compile(r"<attached_files>.*?</attached_files>", re.S | re.I),)


def strip_client_wrappers(text: str) -> str:
    for pattern in CLIENT_WRAPPERS:
        text = pattern.sub("", text)
    return text.strip()


def failed_turn(result) -> ApiError | None:
    """The HTTP error of a turn that failed as a whole (its checkpoint could not be saved, a crash):
    such a result carries `error.http_status` and no answer of its own, so it is never a 200."""
    error = result.error
    if error is not None and error.code == "unknown_ref" and not result.images:
        # an image the request named (a slash command's or a direct call's ref) is not there:
        # the request's own mistake, a 404 like GET /v1/files/{unknown}, not a 200 saying "failed"
        return ApiError(404, error.message or "unknown image", type="not_found_error", code="unknown_ref")
    if error is None or not error.http_status:
        return None
    status = error.http_status
    return ApiError(status, error.message or "the turn failed",
                    type=_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                    code=error.code)


def raise_failed_turn(result) -> None:
    err = failed_turn(result)
    if err is not None:
        raise err


def _fingerprint(message: ChatMessage) -> Any:
    """What identifies a conversation's first message: its text and its images' hashes."""
    if isinstance(message.content, list):
        return [p.text if p.text is not None else hashlib.sha256(
            str(p.image_url.url if isinstance(p.image_url, ImageURL) else p.image_url).encode()).hexdigest()
            for p in message.content]
    return message.content or ""


def _secret(root: str) -> bytes:
    """The key that signs image links, kept under the data root so links survive a restart."""
    path = Path(root) / "api_link_secret"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)  # atomic and exclusive: the first process to start wins, the others read it
    except FileExistsError:
        data = path.read_bytes()
    finally:
        os.unlink(tmp)
    return data


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
           atelier: dict[str, Any] | None = None) -> str:
    payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if atelier is not None:  # the last chunk carries what a non-streamed response's `atelier` carries
        payload["atelier"] = atelier
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _canned(cid: str, created: int, model: str, text: str, stream: bool) -> Response:
    if stream:
        chunks = [_chunk(cid, created, model, {"role": "assistant", "content": text}),
                  _chunk(cid, created, model, {}, "stop"), "data: [DONE]\n\n"]
        return StreamingResponse(iter(chunks), media_type="text/event-stream")
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })


def _usage_chunk(cid: str, created: int, model: str, result=None) -> str:
    """The last chunk when a client asked `stream_options.include_usage`: the planner's tokens."""
    usage = result.usage.openai() if result is not None else {"prompt_tokens": 0, "completion_tokens": 0,
                                                              "total_tokens": 0}
    payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
               "usage": usage}
    return f"data: {json.dumps(payload)}\n\n"


def _finish_reason(result) -> str:
    return "content_filter" if result.refused is not None else "stop"


def _result_extra(adapter: ChatAdapter, result, base: str, user: str) -> dict[str, Any]:
    """Atelier's own fields next to OpenAI's (clients that know them get refs and tool calls).
    Images get their URL instead of the server's file path."""
    images = [{"ref": i.ref, "width": i.width, "height": i.height, "url": adapter.file_url(i.ref, base, user)}
              for i in result.images]
    dumped = result.model_dump(mode="json", include={"tool_calls", "consent", "refused", "error"})
    return {"thread_id": result.thread_id, "images": images, **dumped}


def create_app(atelier, options: ServerOptions | None = None) -> FastAPI:
    """The FastAPI app over an `agent.Atelier` (built lazily by the agent; one per process)."""
    options = options or ServerOptions()
    adapter = ChatAdapter(atelier, options, _secret(atelier.profile.store.root))
    app = FastAPI(title="Atelier (OpenAI-compatible)", version="1", docs_url="/docs", redoc_url=None)
    app.state.adapter = adapter
    app.router.route_class = StrictJSONRoute  # every route below: NaN / Infinity in a body is a 400
    app.add_middleware(RequestBodyLimit, max_bytes=atelier.profile.limits.request_bytes_limit(),
                       keys=options.api_keys)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return err.response()

    @app.exception_handler(AtelierError)
    async def _atelier_error(request: Request, err: AtelierError):
        return api_error_from(err).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):
        log.exception("request failed: %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error ({type(err).__name__}); see the server log", type="server_error",
                        code="internal_error").response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in err.errors()
        )
        return ApiError(400, f"invalid request: {problems}").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        return ApiError(err.status_code, str(err.detail), type=_ERROR_TYPES.get(err.status_code, "invalid_request_error"),
                        code="not_found" if err.status_code == 404 else None).response()

    @app.get("/v1/models")
    async def list_models(request: Request):
        adapter.user_for(request)
        profile = atelier.profile
        return {"object": "list", "data": [{
            "id": adapter.model_id, "object": "model", "created": 0, "owned_by": "atelier",
            "description": profile.description,
        }]}

    @app.get("/v1/files/{name}")
    async def get_file(name: str, request: Request, sig: str | None = None, u: str | None = None,
                       exp: str | None = None):
        """One of the caller's images: the key's user, or the user a valid signed link names.
        Anyone else's ref is answered exactly like an unknown one (404)."""
        ref = name.rsplit(".", 1)[0] if "." in name else name
        if not is_ref(ref):
            raise ApiError(404, f"{name!r} is not an image reference", type="not_found_error", code="unknown_ref")
        user = LOCAL_USER
        if options.api_keys:
            if sig is not None or u is not None or exp is not None:
                user = adapter.link_user(ref, u, exp, sig)
                if user is None:
                    raise ApiError(403, "this image link is not valid or has expired; ask for the image again",
                                   type="permission_error", code="invalid_link")
            else:
                user = adapter.user_for(request)
        images = atelier.images_for(user)
        try:
            version = await asyncio.to_thread(images.get, ref)
            data = await asyncio.to_thread(images.read_bytes, ref)
        except UnknownRefError as err:
            raise ApiError(404, str(err), type="not_found_error", code="unknown_ref") from None
        return Response(data, media_type=f"image/{version.format}",
                        headers={"Cache-Control": "private, max-age=31536000, immutable",
                                 "Content-Disposition": f'inline; filename="{ref}.{version.format}"'})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        canned = adapter.background_task_reply(body)
        if canned is not None:
            adapter.check_model(body)
            adapter.user_for(request)
            return _canned(cid, created, adapter.model_id, canned, body.stream)
        session, lock, text, images = await adapter.prepare(body, request)
        base = str(request.base_url)
        earlier = adapter.earlier_turns(body)
        if not body.stream:
            result = await adapter.complete(session, lock, text, images, earlier)
            content = adapter.render(result, base, session.user_id)
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": adapter.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": _finish_reason(result)}],
                "usage": result.usage.openai(),  # the planner's tokens (0 when no model was called)
                "atelier": _result_extra(adapter, result, base, session.user_id),
            }
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return await _stream(adapter, session, lock, text, images, base, cid, created, request, include_usage,
                             earlier)

    from ui.images_api import add_images_routes

    add_images_routes(app, adapter)  # OpenAI's Images API: /v1/images/generations and /v1/images/edits
    return app


async def _stream(adapter: ChatAdapter, session, lock, text, images, base, cid, created, request,
                  include_usage: bool = False, earlier: list[str] | None = None) -> Response:
    """SSE in OpenAI's chunk shape: a line per tool step, progress as SSE comments, then the answer."""
    model = adapter.model_id
    await lock.acquire()
    try:
        await adapter.branch(session, earlier, text)
        approved = await asyncio.to_thread(adapter.consent_reply, session, text, images)
    except BaseException:
        lock.release()
        raise
    if approved is not None:
        try:
            result = await asyncio.to_thread(session.resume, approved)
        except AtelierError as err:
            raise api_error_from(err) from None
        finally:
            lock.release()
        raise_failed_turn(result)

        async def replay():
            yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
            yield _chunk(cid, created, model, {"content": adapter.render(result, base, session.user_id)})
            yield _chunk(cid, created, model, {}, _finish_reason(result),
                         _result_extra(adapter, result, base, session.user_id))
            if include_usage:
                yield _usage_chunk(cid, created, model, result)
            yield "data: [DONE]\n\n"

        return StreamingResponse(replay(), media_type="text/event-stream")

    try:  # errors before the first event (rate limit, bad upload) are HTTP errors, not a stream
        events = await asyncio.to_thread(session.astream, text, images=images)
        first = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except AtelierError as err:
        lock.release()
        raise api_error_from(err) from None
    except BaseException:
        lock.release()
        raise

    async def sse():
        finished = False
        result = None
        try:
            yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
            pending = [first] if first is not None else []
            while True:
                if pending:
                    event = pending.pop()
                else:
                    try:
                        event = await events.__anext__()
                    except StopAsyncIteration:
                        break
                if isinstance(event, ToolStartEvent):
                    yield _chunk(cid, created, model, {"content": f"_{event.name or 'tool'}…_\n\n"})
                elif isinstance(event, ProgressEvent):
                    yield f": progress {event.step}/{event.total}\n\n"
                elif isinstance(event, StatusEvent):
                    yield f": status {json.dumps(event.model_dump(mode='json', exclude={'kind'}))[:200]}\n\n"
                elif isinstance(event, DoneEvent):
                    result = event.result
                    failed = failed_turn(result)
                    if failed is not None:  # the turn as a whole failed: an error, never an answer
                        yield f"data: {json.dumps(failed.body())}\n\n"
                        yield "data: [DONE]\n\n"
                        finished = True
                        return
                    yield _chunk(cid, created, model, {"content": adapter.render(result, base, session.user_id)})
                    yield _chunk(cid, created, model, {}, _finish_reason(result),
                                 _result_extra(adapter, result, base, session.user_id))
                    finished = True
                # an `error` event needs nothing here: the `done` event that follows carries it
            if not finished:
                yield _chunk(cid, created, model, {}, "stop")
            if include_usage:
                yield _usage_chunk(cid, created, model, result)
            yield "data: [DONE]\n\n"
            finished = True
        except AtelierError as err:
            yield f"data: {json.dumps(api_error_from(err).body())}\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:  # the client went away: stop the work
                try:
                    session.cancel()
                except Exception:  # noqa: BLE001
                    pass
            await events.aclose()
            lock.release()

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def serve(atelier, options: ServerOptions, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    import uvicorn

    uvicorn.run(create_app(atelier, options), host=host, port=port, log_level=log_level)
