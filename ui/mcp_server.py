"""MCP server: Atelier's tools for Claude Desktop, LibreChat or any MCP client.

A thin adapter over `agent.Atelier` sessions, built with the `mcp` SDK's FastMCP (1.x, which speaks
protocol 2025-11-25 and earlier). Each tool of `../shared/TOOLS.md` is exposed under the same name
with the argument schema of `tools.schemas` (the single source of truth) in its client view
(`client_tool_schemas`: every argument described, `crop` as an object {left, top, right, bottom}
rather than a fixed-length array, translated back to the contract's list here), plus:

- `verify`: watermark and C2PA content credentials of a stored image;
- `upload_image`: bring an image (base64 or a data URL) into the conversation and get its ref.

Every tool call goes through the session's `call_tool`, so the same screens, identity checks,
sealing and audit log apply as in the chat, and a wrong or unknown argument comes back as the
contract's one readable line (`tools.schemas.describe_validation_error`), never pydantic's text.
Images come back as MCP image content, with the ref and the tool's short result as text. Each MCP
client connection is one Atelier thread (or the one given with `--thread`).

Users: over stdio, and over HTTP without keys (loopback only), the client acts as `--user`
(default `local`, the one person of the local modes, so refs made in the chat or the CLI work
here too). Over HTTP with keys (`--api-keys FILE` / `$ATELIER_API_KEYS`, the same key file and
mapping as `atelier serve`), every request needs `Authorization: Bearer <key>` and acts as that
key's user: refs resolve only for their owner, rate limits and the audit log are per key's user.
`upload_image` goes through the session's upload path (validation, the upload screen, audit).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
import weakref
from pathlib import Path
from typing import Any

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.tools import Tool
from mcp.server.fastmcp.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tools.errors import AtelierError, BadImageError, ToolArgumentError
from tools.schemas import REF_PATTERN, client_arguments, client_tool_schemas, describe_validation_error

INSTRUCTIONS = (
    "Atelier generates and edits images with the Qwen-Image family. Tools return image refs such as "
    "img_3f9a2c1b; pass a ref to edit_image, relight_image, reframe_image, adjust_image or revert to work "
    "on that image. Use upload_image first to work on a user's own picture. Every result is watermarked "
    "and carries content credentials; verify(image) reads them back."
)

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
    """FastMCP reads a text that is valid JSON as that JSON (Claude Desktop sends lists and objects
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
    return CallToolResult(content=[TextContent(type="text", text=message)], isError=True)


def _decode_base64(data: str) -> bytes:
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise BadImageError("upload: data URLs must be base64-encoded")
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadImageError("upload: the data is not valid base64") from None


class AtelierMCP:
    """Builds the FastMCP server over an `agent.Atelier` and maps MCP client sessions to threads."""

    def __init__(self, atelier, *, user_id: str = "local", thread_id: str | None = None,
                 api_keys: dict[str, str] | None = None, **settings: Any):
        self.atelier = atelier
        self.user_id = user_id
        self.thread_id = thread_id
        self.api_keys = dict(api_keys or {})
        self._by_client: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._shared: dict[str, Any] = {}  # user -> the session when there is no client key (or --thread)
        tools = [
            _tool(spec["function"]["name"], spec["function"]["description"], spec["function"]["parameters"],
                  self._runner(spec["function"]["name"]), _CREATES)
            for spec in client_tool_schemas()
        ]
        tools.append(_tool("verify", (VerifyArgs.__doc__ or "").strip(), VERIFY_SCHEMA, self._verify, _READ_ONLY))
        tools.append(_tool("upload_image", (UploadArgs.__doc__ or "").strip(), UPLOAD_SCHEMA, self._upload, _CREATES))
        if self.api_keys:
            settings.update(_key_auth(self.api_keys, settings))
        profile = getattr(atelier, "profile", None)
        if profile is not None:  # base64 uploads: the HTTP body limit of the API, not the SDK's 4 MB
            settings.setdefault("max_request_body_size", profile.limits.request_bytes_limit())
        self.server = FastMCP("atelier", instructions=INSTRUCTIONS, tools=tools, **settings)

    # users and sessions
    def user(self) -> str:
        """Who is calling: the bearer key's user over HTTP with keys, else `--user`."""
        if not self.api_keys:
            return self.user_id
        from mcp.server.auth.middleware.auth_context import get_access_token

        token = get_access_token()
        if token is None:  # the SDK's auth middleware lets no request without a valid key this far
            raise AtelierError("missing API key (Authorization: Bearer <key>)")
        return token.client_id

    def session_for(self, ctx: Context | None):
        """One Atelier thread per MCP client connection and user (or the `--thread` given)."""
        user = self.user()
        try:
            key = ctx.session if ctx is not None else None
        except (ValueError, LookupError):  # no request context (called outside a request)
            key = None
        if self.thread_id is not None or key is None:
            if user not in self._shared:
                self._shared[user] = self.atelier.session(self.thread_id or "mcp-local", user_id=user)
            return self._shared[user]
        by_user = self._by_client.setdefault(key, {})
        if user not in by_user:
            by_user[user] = self.atelier.session("mcp-" + uuid.uuid4().hex[:16], user_id=user)
        return by_user[user]

    # tools
    def _runner(self, name: str):
        async def run(ctx: Context | None = None, **args: Any):
            args = {k: v for k, v in args.items() if v is not _UNSET}
            try:
                args = client_arguments(name, args)  # crop {left, top, right, bottom} -> the contract's list
                session = self.session_for(ctx)
                result = await anyio.to_thread.run_sync(session.call_tool, name, args, abandon_on_cancel=True)
                return await self._render(result, ctx, session)
            except AtelierError as err:
                return _error(str(err))
            except anyio.get_cancelled_exc_class():
                session.cancel()  # the client cancelled the request: stop the engine at its next step
                raise

        run.__name__ = name
        return run

    async def _ask_consent(self, session, result, ctx: Context | None):
        """A face-changing edit of a real person waits for consent: ask through MCP elicitation
        and resume the turn with the answer. A client that cannot ask declines."""
        question = result.consent.question or "This edit changes a real person's face. Do you have their consent?"
        approved, asked = False, False
        if ctx is not None:
            try:
                answer = await ctx.elicit(question, ConsentAnswer)
                asked = True
                approved = answer.action == "accept" and bool(getattr(answer.data, "approve", False))
            except Exception:  # noqa: BLE001 - the client has no elicitation support
                asked = False
        resumed = await anyio.to_thread.run_sync(session.resume, approved)
        if not asked:
            return None, _error(f"{question} This MCP client cannot ask for consent, so the edit was not made; "
                                "make it in the Atelier chat instead.")
        if not approved:
            return None, _error("The edit was not made: consent was not given.")
        return resumed, None

    async def _render(self, result, ctx: Context | None, session=None):
        if result.consent is not None and session is not None:
            result, failure = await self._ask_consent(session, result, ctx)
            if failure is not None:
                return failure
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
            content.append(ImageContent(type="image", data=base64.b64encode(data).decode(), mimeType=mime))
        summary = {
            "images": [{"ref": i.ref, "width": i.width, "height": i.height} for i in result.images],
            "result": result.tool_calls[-1].result.model_dump(mode="json") if result.tool_calls else None,
        }
        if result.answer:
            summary["answer"] = result.answer
        content.append(TextContent(type="text", text=json.dumps(summary, ensure_ascii=False, default=str)))
        return content

    async def _verify(self, ctx: Context | None = None, **args: Any):
        args = {k: v for k, v in args.items() if v is not _UNSET}
        try:
            ref = _arguments("verify", VerifyArgs, args).image
            session = self.session_for(ctx)
            report = await anyio.to_thread.run_sync(session.verify, ref)  # only the caller's own images
        except AtelierError as err:
            return _error(str(err))
        return [TextContent(type="text", text=json.dumps({"image": ref, **report}, ensure_ascii=False, default=str))]

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
        return [TextContent(type="text", text=json.dumps(
            {"image": version.ref, "width": version.width, "height": version.height}))]


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


def _key_auth(keys: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    """FastMCP settings that require a valid bearer key on every HTTP request."""
    from mcp.server.auth.settings import AuthSettings

    base = f"http://{settings.get('host', '127.0.0.1')}:{settings.get('port', 8001)}"
    return {"token_verifier": _KeyVerifier(keys),
            "auth": AuthSettings(issuer_url=base, resource_server_url=f"{base}/mcp", required_scopes=[],
                                 validate_token_resource=False)}  # static keys name no audience


def build_server(atelier, **kwargs: Any) -> FastMCP:
    return AtelierMCP(atelier, **kwargs).server
