"""A planner on any OpenAI-compatible server (vLLM, SGLang, DashScope, llama-server) via its tools API.

The server renders the Qwen chat template and parses the model's `<tool_call>` output into
`tool_calls` (vLLM: `--enable-auto-tool-choice --tool-call-parser hermes`). Servers that return the
raw `<tool_call>` text in `content` instead are read with `agent.planners.parsing`. A vision planner
(`planner.see_images`) gets the images a user message names attached as data URLs.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from pathlib import Path
from typing import Any

from agent.planners.base import ChatModel, PlannerReply, ToolCall
from tools.errors import ModelUnavailableError


def _image_part(path: str) -> dict[str, Any]:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def to_openai_messages(messages: list[dict[str, Any]], *, see_images: bool) -> list[dict[str, Any]]:
    """Planner messages -> the chat-completions wire format (image paths become content parts)."""
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "tool_call_id", "name")}
        if m["role"] == "tool":
            msg.pop("name", None)
        paths = m.get("image_paths") or []
        if see_images and paths and m["role"] == "user":
            msg["content"] = [*(_image_part(p) for p in paths), {"type": "text", "text": m.get("content") or ""}]
        out.append(msg)
    return out


class OpenAICompatPlanner(ChatModel):
    """`ChatModel` over an OpenAI-compatible `/v1/chat/completions` endpoint."""

    name = "openai"

    def __init__(self, settings, *, client=None):
        self.settings = settings
        self.sees_images = bool(settings.see_images)
        if client is None:
            try:
                from openai import OpenAI
            except ImportError:
                raise ModelUnavailableError(
                    "the openai planner needs the openai package: pip install 'qwen-atelier[remote]'"
                ) from None
            if not settings.base_url:
                raise ModelUnavailableError("planner.base_url is not set (e.g. http://127.0.0.1:8000/v1)")
            client = OpenAI(base_url=settings.base_url, api_key=os.environ.get(settings.api_key_env) or "EMPTY",
                            timeout=120.0, max_retries=1)
        self.client = client

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PlannerReply:
        from openai import OpenAIError

        try:
            response = self.client.chat.completions.create(
                model=self.settings.model or "default",
                messages=to_openai_messages(messages, see_images=self.sees_images),
                tools=tools or None,
                temperature=self.settings.temperature,
                max_tokens=self.settings.max_tokens,
            )
        except OpenAIError as err:
            raise ModelUnavailableError(f"planner server at {self.settings.base_url}: {err}") from None
        message = response.choices[0].message
        text = message.content or ""
        used = getattr(response, "usage", None)
        usage = {"prompt_tokens": int(getattr(used, "prompt_tokens", 0) or 0),
                 "completion_tokens": int(getattr(used, "completion_tokens", 0) or 0)}
        if not message.tool_calls:
            if "<tool_call>" in text:  # the server did not parse the model's native calls
                from agent.planners.parsing import parse_tool_calls

                parsed = parse_tool_calls(text)
                parsed.usage = usage
                return parsed
            return PlannerReply(text=text, raw=text, usage=usage)
        calls, malformed = [], []
        for call in message.tool_calls:
            raw_args = call.function.arguments or "{}"
            try:
                args = json.loads(raw_args) if isinstance(raw_args, str) else dict(raw_args)
            except ValueError:
                malformed.append(f'{{"name": "{call.function.name}", "arguments": {raw_args}}}')
                continue
            if not isinstance(args, dict):
                malformed.append(f'{{"name": "{call.function.name}", "arguments": {raw_args}}}')
                continue
            calls.append(ToolCall(call.function.name, args, **({"id": call.id} if call.id else {})))
        raw = text + "".join(f"\n<tool_call>{c.function.name} {c.function.arguments}</tool_call>"
                             for c in message.tool_calls)
        return PlannerReply(text=text, tool_calls=calls, raw=raw, malformed=malformed, usage=usage)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close:
            close()
