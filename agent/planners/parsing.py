"""Reading tool calls out of a Qwen model's text output.

Qwen models (Qwen2.5, Qwen2.5-Coder, Qwen2.5-VL, Qwen3-VL) write tool calls as

    <tool_call>
    {"name": "generate_image", "arguments": {"prompt": "...", "aspect_ratio": "9:16"}}
    </tool_call>

and small models bend that format: several calls in a row, text before and after, single quotes,
trailing commas, unquoted keys, Python literals (`True`, `None`), code fences, `arguments` given as
a JSON *string*, a missing closing tag or brace, a bare JSON object without tags, or a Python-style
call `generate_image(prompt="...")`. `parse_tool_calls` reads all of these; what it cannot read
becomes an entry of `PlannerReply.malformed` (the raw body) so the graph can ask the model once to
repair it. Argument *validation* is not done here: the graph checks each call with
`tools.schemas.validate_call`.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import json_repair

from agent.planners.base import PlannerReply, ToolCall

_OPEN = "<tool_call>"
_CLOSE = "</tool_call>"
_BLOCK_RE = re.compile(r"<tool_call>(.*?)(?=</tool_call>|<tool_call>|\Z)(?:</tool_call>)?", re.S)
_FENCE_RE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|\Z)", re.S)
_SPECIAL_RE = re.compile(r"<\|im_end\|>|<\|im_start\|>\w*|<\|endoftext\|>|</?tool_call>")
_ARG_KEYS = ("arguments", "parameters", "args", "input")


def _loads(text: str) -> Any:
    """Strict JSON, then Python literals, then json_repair (quotes, commas, braces, keys)."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        value = json_repair.loads(text)
    except Exception:  # json_repair raises little, but never let a parser crash a turn
        return None
    return value if value not in ("", None) else None


def _python_call(text: str) -> Any:
    """`generate_image(prompt="x", count=2)` -> {"name": ..., "arguments": {...}} (literals only)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        return None
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            return None
    return {"name": node.func.id, "arguments": args}


def _as_calls(value: Any) -> list[ToolCall] | None:
    """A parsed value -> tool calls, or None when it does not look like call(s)."""
    if isinstance(value, list):
        calls: list[ToolCall] = []
        for item in value:
            got = _as_calls(item)
            if got is None:
                return None
            calls.extend(got)
        return calls or None
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI shape {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    args: Any = {}
    for key in _ARG_KEYS:
        if key in value:
            args = value[key]
            break
    if isinstance(args, str):
        args = _loads(args) if args.strip() else {}
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    call = ToolCall(name=name.strip(), args=args)
    if isinstance(value.get("id"), str) and value["id"]:
        call.id = value["id"]
    return [call]


def _read_body(body: str) -> list[ToolCall] | None:
    body = body.strip()
    fence = _FENCE_RE.search(body)
    if fence and body.startswith("```"):
        body = fence.group(1).strip()
    calls = _as_calls(_loads(body))
    if calls is None:
        calls = _as_calls(_python_call(body))
    return calls


def _json_spans(text: str) -> list[tuple[int, int]]:
    """Top-level balanced {...} / [...] spans (string- and escape-aware)."""
    spans, depth, start, in_str, quote, esc = [], 0, -1, False, "", False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
            continue
        if ch in "\"'" and depth > 0:
            in_str, quote = True, ch
        elif ch in "{[":
            if depth == 0:
                start = i
            depth += 1
        elif ch in "}]" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    if depth > 0 and start >= 0:  # unclosed object at the end: let the repairer try
        spans.append((start, len(text)))
    return spans


def _clean_text(text: str) -> str:
    text = _SPECIAL_RE.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parse_tool_calls(text: str) -> PlannerReply:
    """Split a model's output into the user-facing text, tool calls and unreadable call bodies."""
    raw = text or ""
    calls: list[ToolCall] = []
    malformed: list[str] = []

    if _OPEN in raw:
        outside: list[str] = []
        pos = 0
        for m in _BLOCK_RE.finditer(raw):
            outside.append(raw[pos:m.start()])
            pos = m.end()
            body = m.group(1)
            if not body.strip():
                continue
            got = _read_body(body)
            if got is None:
                malformed.append(body.strip())
            else:
                calls.extend(got)
        outside.append(raw[pos:])
        return PlannerReply(text=_clean_text("".join(outside)), tool_calls=calls, raw=raw, malformed=malformed)

    # No tags: calls written in a code fence, as a bare JSON object, or as a Python-style call.
    remaining = raw
    for m in list(_FENCE_RE.finditer(raw)):
        got = _read_body(m.group(1))
        if got:
            calls.extend(got)
            remaining = remaining.replace(m.group(0), "", 1)
    if not calls:
        cut: list[tuple[int, int]] = []
        for start, end in _json_spans(raw):
            got = _as_calls(_loads(raw[start:end]))
            if got:
                calls.extend(got)
                cut.append((start, end))
        for start, end in reversed(cut):
            remaining = remaining[:start] + remaining[end:]
    if not calls:
        stripped = raw.strip()
        if re.match(r"^[a-z_][a-z0-9_]*\(.*\)$", stripped, re.S):
            got = _as_calls(_python_call(stripped))
            if got:
                calls.extend(got)
                remaining = ""
    return PlannerReply(text=_clean_text(remaining), tool_calls=calls, raw=raw, malformed=malformed)


def format_tool_call(name: str, args: dict[str, Any]) -> str:
    """The Qwen-native text of one call (used to replay assistant turns to the model)."""
    return f"{_OPEN}\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + f"\n{_CLOSE}"
