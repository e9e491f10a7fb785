"""MCP server: Atelier's tools for Claude Desktop, LibreChat or any MCP client.

A thin adapter over `agent.Atelier` sessions, built on the `mcp` SDK 2.x (`MCPServer`, mcp>=2.3,<3),
which serves protocol 2026-07-28 (stateless: no initialize handshake and no session id; the client
finds the server with `server/discover`, every request carries its own protocol version and
capabilities, and a server asks the client something by answering "input required") and the
handshake versions up to 2025-11-25, over stdio and streamable HTTP alike. Each tool of
`../shared/TOOLS.md` is exposed under the same name with the argument schema of `tools.schemas`
(the single source of truth) in its client view (`client_tool_schemas`: every argument described,
`crop` as an object {left, top, right, bottom} rather than a fixed-length array, translated back to
the contract's list here), plus:

- `verify`: watermark and C2PA content credentials of a stored image;
- `upload_image`: bring an image (base64 or a data URL) into the conversation and get its ref.

Every tool call goes through the session's `call_tool`, so the same screens, identity checks,
sealing and audit log apply as in the chat, and a wrong or unknown argument comes back as the
contract's one readable line (`tools.schemas.describe_validation_error`), never pydantic's text.
Images come back as MCP image content, with the ref and the tool's short result as text.

Threads (which Atelier conversation a call works in), first that applies:

1. the call names one: `_meta: {"atelier/thread": "<id>"}` on the request (1-200 printable
   characters; threads are per user, so a name only ever reaches the caller's own threads);
2. `--thread ID` (the server's default thread);
3. protocol 2025-11-25 over HTTP: one thread per MCP session (`Mcp-Session-Id`) and user, so each
   client connection is one thread, as before;
4. otherwise (2026-07-28, which has no session to key on, and stdio, where the process is the one
   connection): one thread per user for the server process's lifetime. Over stdio that is the
   client's connection in either protocol version; over HTTP on 2026-07-28 it is per API key (every
   client of one key shares it; a thread runs one call at a time, so clients that work in parallel
   name their own threads in `_meta`).

Consent: a face-changing edit of a real person waits for consent (the session's interrupt). On
2025-11-25 the server asks with an `elicitation/create` request in the middle of the call; on
2026-07-28, which has no server-to-client requests, the call answers `input_required` with the
same form and a sealed `requestState` naming the waiting thread (the SDK encrypts and binds it to
the tool, its arguments, the API key's user and 10 minutes), and the client's retry carries the
answer, which resumes that thread. A client without the elicitation capability, or a declined
answer, closes the waiting turn and nothing is made. The state's key lives in the server process:
an answer must come back to the process that asked.

Users: over stdio, and over HTTP without keys (loopback only), the client acts as `--user`
(default `local`, the one person of the local modes, so refs made in the chat or the CLI work
here too). Over HTTP with keys (`--api-keys FILE` / `$ATELIER_API_KEYS`, the same key file and
mapping as `atelier serve`), every request, in either protocol version, needs
`Authorization: Bearer <key>` and acts as that key's user: refs resolve only for their owner, rate
limits and the audit log are per key's user. `upload_image` goes through the session's upload path
(validation, the upload screen, audit).

The chat app's dependency, Chainlit 2.12, declares `mcp<2` (it imports only `mcp.ClientSession`,
which 2.x keeps), so `pyproject.toml` does not name mcp and `make install` installs the 2.x SDK in
a second step; with an mcp older than 2.3 this module refuses to load with one line (`MCP2_NEEDED`).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Any

MCP2_NEEDED = "atelier mcp needs the mcp 2.x SDK: pip install 'mcp>=2.3,<3'"


def sdk_supported(version: str | None) -> bool:
    """Whether an installed `mcp` version is the 2.x SDK this server is built on (2.3 or newer, not 3)."""
    try:
        major, minor = (int(part) for part in (version or "").split(".")[:2])
    except ValueError:
        return False
    return major == 2 and minor >= 3


def _installed_sdk() -> str | None:
    try:
        return metadata.version("mcp")
    except metadata.PackageNotFoundError:
        return None


if not sdk_supported(_installed_sdk()):
    raise ImportError(MCP2_NEEDED)

import anyio  # noqa: E402
from mcp.server.elicitation import render_elicitation_schema  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.server.mcpserver.tools import Tool  # noqa: E402
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata  # noqa: E402
from mcp.types import (  # noqa: E402
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    ImageContent,
    InputRequiredResult,
    TextContent,
    ToolAnnotations,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model  # noqa: E402

from tools.errors import AtelierError, BadImageError, ToolArgumentError  # noqa: E402
from tools.schemas import REF_PATTERN, client_arguments, client_tool_schemas, describe_validation_error  # noqa: E402

INSTRUCTIONS = (
    "Atelier generates and edits images with the Qwen-Image family. Tools return image refs such as "
    "img_3f9a2c1b; pass a ref to edit_image, relight_image, reframe_image, adjust_image or revert to work "
    "on that image. Use upload_image first to work on a user's own picture. Every result is watermarked "
    "and carries content credentials; verify(image) reads them back."
)

THREAD_META_KEY = "atelier/thread"  # `_meta` key of a request that names its thread
CONSENT_KEY = "consent"  # the input request (2026-07-28) that asks for consent
_MAX_THREADS = 10_000  # remembered (connection, user) -> thread mappings (the SDK's default session cap)

_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<unset>"})()

_READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
_CREATES = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)


class _PassArgs(ArgModelBase):
    """Every argument the client sent, unknown ones too, passed on as it came: values and names are
    judged by the contract (`validate_call` inside the session, the models of `verify` and
    `upload_image`), whose errors are one readable line; the SDK's own check would answer with
    pydantic's text."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    def model_dump_one_level(self) -> dict[str, Any]:
        return {**super().model_dump_one_level(), **(self.__pydantic_extra__ or {})}


class _Arguments(FuncMetadata):
    """MCPServer reads a text that is valid JSON as that JSON (Claude Desktop sends lists and objects
    as strings); a text argument (a prompt such as "42" or "[draft]") stays the text it is."""

    text_fields: frozenset[str] = frozenset()

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        parsed = super().pre_parse_json(data)
        return {k: data[k] if k in self.text_fields else v for k, v in parsed.items()}


def _text_fields(parameters: dict[str, Any]) -> frozenset[str]:
    def text(prop: dict[str, Any]) -> bool:
        kinds = [prop.get("type")] + [a.get("type") for a in prop.get("anyOf", [])]
        return "string" in kinds and not {"array", "object"} & set(kinds)
    return frozenset(k for k, prop in parameters["properties"].items() if text(prop))


def _tool(name: str, description: str, parameters: dict[str, Any], fn, annotations: ToolAnnotations) -> Tool:
    arg_model = create_model(f"{name}_arguments", __base__=_PassArgs,
                             **{f: (Any, _UNSET) for f in parameters["properties"]})
    return Tool(
        fn=fn, name=name, title=name.replace("_", " ").capitalize(), description=description,
        parameters=parameters, fn_metadata=_Arguments(arg_model=arg_model, text_fields=_text_fields(parameters)),
        is_async=True, context_kwarg="ctx", annotations=annotations,
    )


class ConsentAnswer(BaseModel):
    approve: bool = Field(description="The people shown agreed to this edit of their face")


class VerifyArgs(BaseModel):
    """Read an image's invisible watermark and C2PA content credentials (was it made or edited by Atelier?)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(pattern=REF_PATTERN)


class UploadArgs(BaseModel):
    """Bring an image into the conversation (e.g. a photo the user shared) and get its ref."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(min_length=1)
    filename: str | None = None


def _schema(model: type[BaseModel], description: dict[str, str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for key, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        prop.pop("default", None) if prop.get("default") == "" else None
        if key in description:
            prop["description"] = description[key]
    return schema


VERIFY_SCHEMA = _schema(VerifyArgs, {"image": "Ref of the image to check, e.g. img_3f9a2c1b"})
UPLOAD_SCHEMA = _schema(UploadArgs, {
    "data": "The image as base64 (PNG, JPEG or WebP) or as a data: URL",
    "filename": "Original file name (display only)",
})


def _arguments(name: str, model: type[BaseModel], args: dict[str, Any]) -> BaseModel:
    """The arguments of `verify` or `upload_image`, checked as the contract checks its own."""
    try:
        return model.model_validate(args)
    except ValidationError as err:
        raise ToolArgumentError(f"{name}: {describe_validation_error(err, model)}") from None


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _decode_base64(data: str) -> bytes:
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise BadImageError("upload: data URLs must be base64-encoded")
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadImageError("upload: the data is not valid base64") from None


CONSENT_SCHEMA = render_elicitation_schema(ConsentAnswer)


def _request(ctx: Context | None):
    """The SDK's request context of `ctx`, or None outside a request (a direct call in tests)."""
    if ctx is None:
        return None
    try:
        return ctx.request_context
    except (ValueError, LookupError):
        return None


def _stateless(ctx: Context | None) -> bool:
    """Protocol 2026-07-28 or newer: no session, no server-to-client requests (input_required instead)."""
    request = _request(ctx)
    return request is not None and request.protocol_version in MODERN_PROTOCOL_VERSIONS


def _can_elicit(ctx: Context | None) -> bool:
    """The client declared form elicitation (a bare `elicitation: {}` counts, as the spec says)."""
    if _request(ctx) is None:
        return False
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def _approved(response: Any) -> bool:
    """An elicitation answer that gives consent: accepted, with `approve` true."""
    if not isinstance(response, ElicitResult) or response.action != "accept":
        return False
    try:
        return ConsentAnswer.model_validate(response.content or {}).approve
    except ValidationError:
        return False


class AtelierMCP:
    """Builds the `MCPServer` over an `agent.Atelier` and maps MCP calls to threads (module docstring)."""

    def __init__(self, atelier, *, user_id: str = "local", thread_id: str | None = None,
                 api_keys: dict[str, str] | None = None, host: str = "127.0.0.1", port: int = 8001,
                 log_level: str = "WARNING"):
        self.atelier = atelier
        self.user_id = user_id
        self.thread_id = thread_id
        self.api_keys = dict(api_keys or {})
        self.host, self.port = host, port
        self._threads: OrderedDict[tuple[str, str], str] = OrderedDict()  # (connection, user) -> thread id
        self._sessions: OrderedDict[tuple[str, str], Any] = OrderedDict()  # (thread, user) -> session
        tools = [
            _tool(spec["function"]["name"], spec["function"]["description"], spec["function"]["parameters"],
                  self._runner(spec["function"]["name"]), _CREATES)
            for spec in client_tool_schemas()
        ]
        tools.append(_tool("verify", (VerifyArgs.__doc__ or "").strip(), VERIFY_SCHEMA, self._verify, _READ_ONLY))
        tools.append(_tool("upload_image", (UploadArgs.__doc__ or "").strip(), UPLOAD_SCHEMA, self._upload, _CREATES))
        auth = _key_auth(self.api_keys, host, port) if self.api_keys else {}
        self.server = MCPServer("atelier", instructions=INSTRUCTIONS, tools=tools, log_level=log_level, **auth)

    # transports
    def streamable_http_app(self):
        """The ASGI app of streamable HTTP at /mcp (both protocol eras; 2025-11-25 sessions in memory)."""
        profile = getattr(self.atelier, "profile", None)
        extra: dict[str, Any] = {}
        if profile is not None:  # base64 uploads: the HTTP body limit of the API, not the SDK's 4 MB
            extra["max_request_body_size"] = profile.limits.request_bytes_limit()
        return self.server.streamable_http_app(host=self.host, **extra)

    def run(self, transport: str = "stdio") -> None:
        if transport == "stdio":
            self.server.run("stdio")
            return
        import uvicorn

        uvicorn.run(self.streamable_http_app(), host=self.host, port=self.port,
                    log_level=self.server.settings.log_level.lower())

    # users, threads and sessions
    def user(self) -> str:
        """Who is calling: the bearer key's user over HTTP with keys, else `--user`."""
        if not self.api_keys:
            return self.user_id
        from mcp.server.auth.middleware.auth_context import get_access_token

        token = get_access_token()
        if token is None:  # the SDK's auth middleware lets no request without a valid key this far
            raise AtelierError("missing API key (Authorization: Bearer <key>)")
        return token.client_id

    def thread_for(self, ctx: Context | None, user: str) -> str:
        """The thread a call works in (the module docstring's order)."""
        request = _request(ctx)
        named = (request.meta or {}).get(THREAD_META_KEY) if request is not None else None
        if named is not None:
            if not isinstance(named, str) or not (0 < len(named) <= 200) or not named.isprintable():
                raise ToolArgumentError(f"_meta {THREAD_META_KEY} must be a thread id of 1-200 printable characters")
            return named
        if self.thread_id is not None:
            return self.thread_id
        connection = ""  # the process: stdio's one connection, or 2026-07-28's per-user thread
        if request is not None and not _stateless(ctx):
            headers = getattr(request.request, "headers", None)
            session_id = headers.get("mcp-session-id") if headers is not None else None
            if session_id:
                connection = f"session:{session_id}"
        key = (connection, user)
        thread = self._threads.get(key)
        if thread is None:
            thread = self._threads[key] = "mcp-" + uuid.uuid4().hex[:16]
            while len(self._threads) > _MAX_THREADS:  # the oldest sessions have long ended
                self._threads.popitem(last=False)
        self._threads.move_to_end(key)
        return thread

    def session(self, thread_id: str, user: str):
        key = (thread_id, user)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self.atelier.session(thread_id, user_id=user)
            while len(self._sessions) > _MAX_THREADS:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        return session

    def session_for(self, ctx: Context | None):
        user = self.user()
        return self.session(self.thread_for(ctx, user), user)

    # tools
    def _runner(self, name: str):
        async def run(ctx: Context | None = None, **args: Any):
            args = {k: v for k, v in args.items() if v is not _UNSET}
            session = None
            try:
                answered = self._answered_session(ctx)
                if answered is not None:  # 2026-07-28: the retry that carries the consent answer
                    session = answered
                    result = await self._resume(session, _approved((ctx.input_responses or {}).get(CONSENT_KEY)))
                    return result if isinstance(result, CallToolResult) else await self._render(result, ctx)
                args = client_arguments(name, args)  # crop {left, top, right, bottom} -> the contract's list
                session = self.session_for(ctx)
                result = await anyio.to_thread.run_sync(session.call_tool, name, args, abandon_on_cancel=True)
                return await self._render(result, ctx, session)
            except AtelierError as err:
                return _error(str(err))
            except anyio.get_cancelled_exc_class():
                if session is not None:
                    session.cancel()  # the client cancelled the request: stop the engine at its next step
                raise

        run.__name__ = name
        return run

    def _answered_session(self, ctx: Context | None):
        """On a 2026-07-28 retry, the session whose consent question this call answers (its thread
        is in the sealed request state the SDK has verified), else None."""
        state = ctx.request_state if _request(ctx) is not None else None
        if not state:
            return None
        try:
            waiting = json.loads(state)
            thread, user = waiting["thread"], waiting["user"]
        except (ValueError, KeyError, TypeError):
            raise AtelierError("this consent answer does not belong to a question of this server") from None
        if user != self.user():
            raise AtelierError("this consent answer does not belong to a question of this server")
        return self.session(thread, user)

    async def _resume(self, session, approved: bool):
        """Answer the waiting turn; a "no" ends in the error the client shows."""
        resumed = await anyio.to_thread.run_sync(session.resume, approved)
        if not approved:
            return _error("The edit was not made: consent was not given.")
        return resumed

    async def _ask_consent(self, session, result, ctx: Context | None):
        """A face-changing edit of a real person waits for consent: ask through MCP elicitation
        (2025-11-25: a request to the client now; 2026-07-28: input_required, answered by the
        client's retry) and resume the turn with the answer. A client that cannot ask declines."""
        question = result.consent.question or "This edit changes a real person's face. Do you have their consent?"
        if _can_elicit(ctx) and _stateless(ctx):
            form = ElicitRequest(params=ElicitRequestFormParams(message=question, requested_schema=CONSENT_SCHEMA))
            return InputRequiredResult(input_requests={CONSENT_KEY: form}, request_state=json.dumps(
                {"thread": session.thread_id, "user": session.user_id}))
        if _can_elicit(ctx):
            try:
                answer = await ctx.elicit(question, ConsentAnswer)
            except Exception:  # noqa: BLE001 - the client failed the request: it could not ask
                pass
            else:
                return await self._resume(session, answer.action == "accept" and bool(answer.data.approve))
        await anyio.to_thread.run_sync(session.resume, False)
        return _error(f"{question} This MCP client cannot ask for consent, so the edit was not made; "
                      "make it in the Atelier chat instead.")

    async def _render(self, result, ctx: Context | None, session=None):
        if result.consent is not None and session is not None:
            result = await self._ask_consent(session, result, ctx)
            if isinstance(result, (CallToolResult, InputRequiredResult)):
                return result
        if result.consent is not None:
            return _error(result.consent.question or "This edit needs consent.")
        if result.refused is not None:
            return _error(f"Refused ({result.refused.category or 'policy'}): {result.refused.reason}")
        if result.error is not None:
            return _error(result.error.message or result.error.code)
        content: list[Any] = []
        for image in result.images:
            data = await anyio.to_thread.run_sync(Path(image.path).read_bytes)
            mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else (
                "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/webp")
            content.append(ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime))
        summary = {
            "images": [{"ref": i.ref, "width": i.width, "height": i.height} for i in result.images],
            "result": result.tool_calls[-1].result.model_dump(mode="json") if result.tool_calls else None,
        }
        if result.answer:
            summary["answer"] = result.answer
        content.append(TextContent(type="text", text=json.dumps(summary, ensure_ascii=False, default=str)))
        return CallToolResult(content=content)

    async def _verify(self, ctx: Context | None = None, **args: Any):
        args = {k: v for k, v in args.items() if v is not _UNSET}
        try:
            ref = _arguments("verify", VerifyArgs, args).image
            session = self.session_for(ctx)
            report = await anyio.to_thread.run_sync(session.verify, ref)  # only the caller's own images
        except AtelierError as err:
            return _error(str(err))
        return CallToolResult(content=[
            TextContent(type="text", text=json.dumps({"image": ref, **report}, ensure_ascii=False, default=str))])

    async def _upload(self, ctx: Context | None = None, **args: Any):
        args = {k: v for k, v in args.items() if v is not _UNSET}
        try:
            upload = _arguments("upload_image", UploadArgs, args)
            data, filename = upload.data, upload.filename
            session = self.session_for(ctx)
            raw = _decode_base64(data)
            # the session's upload path: rate limit, validation, the upload screen, the audit log
            version = await anyio.to_thread.run_sync(lambda: session.upload(raw, filename=filename))
        except AtelierError as err:
            return _error(str(err))
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(
            {"image": version.ref, "width": version.width, "height": version.height}))])


class _ProtocolStdout:
    """`sys.stdout` while serving MCP over stdio: the SDK's transport takes `.buffer` (the real
    stdout, reserved for protocol messages); any text a library prints goes to stderr instead of
    corrupting the protocol stream."""

    def __init__(self, protocol: Any, text_sink: Any):
        self.buffer = protocol
        self._sink = text_sink

    def write(self, text: str) -> int:
        return self._sink.write(text)

    def flush(self) -> None:
        self._sink.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)


def protect_stdout() -> None:
    """Keep fd 1 for MCP messages only: C-level writes to fd 1 and Python prints go to stderr."""
    import io
    import os
    import sys

    sys.stdout.flush()
    protocol = io.FileIO(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = _ProtocolStdout(io.BufferedWriter(protocol), sys.stderr)


class _KeyVerifier:
    """Bearer keys -> users, for the SDK's auth middleware (`TokenVerifier`): a static key file
    instead of an OAuth server, with the same mapping as `atelier serve`."""

    def __init__(self, keys: dict[str, str]):
        self.keys = keys

    async def verify_token(self, token: str):
        from mcp.server.auth.provider import AccessToken

        from ui.http_api import key_user

        user = key_user(self.keys, token)
        return None if user is None else AccessToken(token="", client_id=user, scopes=[])


def _key_auth(keys: dict[str, str], host: str, port: int) -> dict[str, Any]:
    """`MCPServer` arguments that require a valid bearer key on every HTTP request, in either protocol version."""
    from mcp.server.auth.settings import AuthSettings

    base = f"http://{host}:{port}"
    return {"token_verifier": _KeyVerifier(keys),
            "auth": AuthSettings(issuer_url=base, resource_server_url=f"{base}/mcp", required_scopes=[],
                                 validate_token_resource=False)}  # static keys name no audience


def build_server(atelier, **kwargs: Any) -> AtelierMCP:
    """The MCP server over `atelier`: `.run("stdio" | "http")`, `.streamable_http_app()`, `.server` (the SDK's)."""
    return AtelierMCP(atelier, **kwargs)
