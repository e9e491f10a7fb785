"""What the planner reads: system prompt, routing rules, the session's images and the conversation.

The texts live in `prompts/planner/` (`system.md`, `routing.md`, `examples.md`) and are loaded with
`importlib.resources`. The entry point, stable for the graph and the evals:

    build_messages(*, history, images, user_text, current=None, max_history=20,
                   examples=True, transcript=True) -> list[dict]

- `history`: the conversation so far, oldest first, as OpenAI-style dicts: `{"role": "user" |
  "assistant" | "tool", "content": str}`; assistant turns may carry `tool_calls` either OpenAI-style
  (`{"id", "type": "function", "function": {"name", "arguments": str|dict}}`) or flat
  (`{"id", "name", "args"}`); tool turns carry `tool_call_id` (and optionally `name`). `text` is
  accepted instead of `content` (the eval files use it). LangChain message objects (`.type`,
  `.content`, `.tool_calls`) are accepted too. System messages in the history are dropped.
- `images`: the session's image versions, oldest first: `tools.store.ImageVersion` objects or dicts
  with `ref` and optionally `origin` (`upload` | `generated` | `edited`, or the tool name that made
  it, e.g. `relight_image`), `parent`, `desc`/`description`, `tool_call` ({"name", "args"}),
  `filename`, `metadata` (a `desc`/`description`/`caption` there is used too).
- `user_text`: the new user message, or None when the planner is called again after tool results
  (the history then already ends with the tool messages).
- `current`: the ref the user is looking at; default: the last image of `images`.
- `max_history`: keep at most this many history messages (the oldest are dropped first; a dropped
  assistant tool call never leaves its tool result dangling).

- `transcript` (default True): earlier turns (everything before the last user message) are given
  as a compact transcript inside that user message ("User: ...", "Assistant: ...", "Assistant
  called <tool> {args}", "Tool result: ..."); a small planner then decides the new turn on its own
  instead of imitating earlier replies. False keeps them as separate chat messages.

- `attached`: the refs sent with this message (the images list says so).

Images are shown by number (`#1`, `#2`, ... oldest first), never by ref: the planner names an
image by its number or a word of the version tree and `agent.resolver` turns that into the ref;
refs in the transcript are replaced by their numbers too.

The result is `[system, user, *current_turn]`: the last user message reads images list,
transcript, `Message: <text>`, then the short reminder of `prompts/planner/reminder.md`; a repair
exchange of the current turn follows as real messages. The system message is identical across turns, so a backend's prompt cache can reuse it.
Tool schemas are not part of the messages: the backend renders them
(`tools.schemas.tool_json_schemas()`).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import yaml

PROMPT_PACKAGE = "prompts.planner"
REPAIR_FLAG = "repair"  # set on the messages of a repair exchange (the transcript leaves them out)
def _origin_words() -> dict[str, str]:
    """How the images list names where a version came from: the step words of the tools
    (`tools.schemas.STEP_WORDS`), by tool name and by the store's origins."""
    from tools.schemas import STEP_WORDS

    words = {"upload": "uploaded original", "uploaded": "uploaded original", "generated": "generated",
             "edited": "edited"}
    words.update(STEP_WORDS)
    words.pop("revert", None)
    return words


_ORIGIN_WORDS = _origin_words()
_DESC_KEYS = ("desc", "description", "caption")
_DESC_MAX = 140


@lru_cache(maxsize=None)
def load_prompt(name: str) -> str:
    """One text of `prompts/planner/` (e.g. "system.md"), stripped."""
    return (resources.files(PROMPT_PACKAGE) / name).read_text(encoding="utf-8").strip()


@lru_cache(maxsize=None)
def turn_texts() -> dict[str, str]:
    """The texts the turn itself writes (`prompts/turn.yaml`: repair requests, refusals, ...)."""
    return yaml.safe_load((resources.files("prompts") / "turn.yaml").read_text(encoding="utf-8"))


def say(key: str, **values: Any) -> str:
    """One text of `prompts/turn.yaml` with its {placeholders} filled."""
    return turn_texts()[key].format(**values).strip()


def system_prompt(*, examples: bool = True) -> str:
    parts = [load_prompt("system.md"), load_prompt("routing.md")]
    if examples:
        parts.append(load_prompt("examples.md"))
    return "\n\n".join(parts)


def get_field(obj: Any, key: str, default: Any = None) -> Any:
    """`obj[key]` for a dict (eval cases, state), `obj.key` otherwise (store versions)."""
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _shorten(text: str, limit: int = _DESC_MAX) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def describe_image(image: Any) -> str:
    """A short description of one version from what is known about it."""
    for key in _DESC_KEYS:
        if get_field(image, key):
            return _shorten(get_field(image, key))
    meta = get_field(image, "metadata") or {}
    for key in _DESC_KEYS:
        if meta.get(key):
            return _shorten(meta[key])
    call = get_field(image, "tool_call") or {}
    args = call.get("args") or call.get("arguments") or {}
    if isinstance(args, dict) and args:
        for key in ("prompt", "instruction", "description"):
            if args.get(key):
                return _shorten(args[key])
        shown = {k: v for k, v in args.items() if k not in ("image", "references") and v is not None}
        if shown:
            return _shorten(", ".join(f"{k}={v}" for k, v in shown.items()))
    if get_field(image, "filename"):
        return _shorten(f"file {get_field(image, 'filename')}")
    return ""


def _origin_word(image: Any) -> str:
    call = get_field(image, "tool_call") or {}
    origin = get_field(image, "origin") or "upload"
    if origin == "edited" and call.get("name") in _ORIGIN_WORDS:
        origin = call["name"]
    return _ORIGIN_WORDS.get(str(origin), str(origin))


def image_lines(images: Iterable[Any], current: str | None = None, attached: Iterable[str] = ()) -> list[str]:
    """One line per version, by number (the planner never needs a ref): `#2 relit from #1: warm
    light from the left (current)`; photos sent with this message say so."""
    images = [im for im in images if get_field(im, "ref")]
    if current is None and images:
        current = get_field(images[-1], "ref")
    numbers = {get_field(im, "ref"): n for n, im in enumerate(images, 1)}
    attached = set(attached)
    lines = []
    for n, image in enumerate(images, 1):
        ref = get_field(image, "ref")
        how = _origin_word(image)
        parent = get_field(image, "parent")
        if how.startswith("uploaded"):
            head = f"#{n} uploaded photo"
        elif parent in numbers:
            head = f"#{n} {how} from #{numbers[parent]}"
        else:
            head = f"#{n} {how}"
        if ref in attached:
            head += ", sent with this message"
        desc = _REF_IN_TEXT.sub(lambda m: f"#{numbers[m.group()]}" if m.group() in numbers else "an image",
                                describe_image(image))
        line = f"{head}: {desc}" if desc else head
        if ref == current:
            line += " (current)"
        lines.append(line)
    return lines


def images_block(images: Iterable[Any], current: str | None = None, attached: Iterable[str] = ()) -> str:
    lines = image_lines(images, current, attached)
    if not lines:
        return "Images in this chat: none."
    return "Images in this chat:\n" + "\n".join(lines)


def ref_labels(images: Iterable[Any]) -> dict[str, str]:
    """ref -> its number in the planner's list ("#3")."""
    refs = list(dict.fromkeys(get_field(im, "ref") for im in images if get_field(im, "ref")))
    return {ref: f"#{n}" for n, ref in enumerate(refs, 1)}


def _labelled(text: str, labels: dict[str, str]) -> str:
    """Refs in a text written for the planner replaced by their numbers."""
    return _REF_IN_TEXT.sub(lambda m: labels.get(m.group(), "an earlier image"), text)


def _flat_call(call: Any) -> dict[str, Any]:
    """Any tool-call shape -> OpenAI style with `arguments` as a JSON string."""
    fn = get_field(call, "function")
    if fn:
        name, args = get_field(fn, "name"), get_field(fn, "arguments")
    else:
        name = get_field(call, "name")
        args = get_field(call, "args", None)
        if args is None:
            args = get_field(call, "arguments", {})
    if not isinstance(args, str):
        args = json.dumps(args or {}, ensure_ascii=False)
    return {"id": get_field(call, "id") or "", "type": "function", "function": {"name": name, "arguments": args}}


_LC_ROLES = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}


def normalize_message(msg: Any) -> dict[str, Any] | None:
    role = get_field(msg, "role") or _LC_ROLES.get(get_field(msg, "type") or "", None)
    if role not in ("user", "assistant", "tool"):
        return None
    content = get_field(msg, "content")
    if content is None:
        content = get_field(msg, "text", "")
    if isinstance(content, list):  # multimodal content parts: keep the text
        content = "\n".join(str(get_field(p, "text", "")) for p in content if get_field(p, "type", "text") == "text")
    out: dict[str, Any] = {"role": role, "content": str(content or "")}
    if get_field(msg, REPAIR_FLAG):
        out[REPAIR_FLAG] = True
    if role == "assistant" and get_field(msg, "tool_calls"):
        out["tool_calls"] = [_flat_call(c) for c in get_field(msg, "tool_calls")]
    if role == "tool":
        out["tool_call_id"] = get_field(msg, "tool_call_id") or ""
        if get_field(msg, "name"):
            out["name"] = get_field(msg, "name")
    return out


def _trim(history: list[dict[str, Any]], max_history: int) -> list[dict[str, Any]]:
    if max_history <= 0:
        return []
    if len(history) <= max_history:
        return history
    kept = history[-max_history:]
    while kept and kept[0]["role"] == "tool":  # never start with a tool result whose call was cut
        kept = kept[1:]
    return kept


_REF_IN_TEXT = re.compile(r"\bimg_[0-9a-zA-Z]+\b")
_TOOL_OF_ORIGIN = {word: tool for tool, word in _ORIGIN_WORDS.items() if tool.endswith("_image")}


def _made_by(images: Iterable[Any]) -> dict[str, str]:
    """ref -> how a tool made it (`relight_image on img_p`), for the images a tool made (not uploads)."""
    out = {}
    for image in images:
        ref, call = get_field(image, "ref"), get_field(image, "tool_call") or {}
        tool = call.get("name") or _TOOL_OF_ORIGIN.get(_origin_word(image))
        if ref and tool:
            parent, args = get_field(image, "parent"), call.get("args") or call.get("arguments")
            if isinstance(args, dict) and args:
                out[ref] = f"{tool} {json.dumps(args, ensure_ascii=False)}"
            else:
                out[ref] = f"{tool} on {parent}" if parent else tool
    return out


def transcript_line(msg: dict[str, Any], made_by: dict[str, str] | None = None) -> str:
    """One earlier message as a line of the transcript the planner reads.

    An earlier assistant text that only reported a result ("Done: img_x") is shown as the tool call
    that made that image ("Assistant called relight_image -> img_x"): a small planner imitates what
    it sees, and the pattern to imitate must be a call, never a "Done" without one.
    """
    role, text = msg["role"], " ".join(msg.get("content", "").split())
    if role == "user":
        return f"User: {text}"
    if role == "tool":
        return f"Tool result: {text}"
    made = [r for r in dict.fromkeys(_REF_IN_TEXT.findall(text)) if r in (made_by or {})]
    if made and not msg.get("tool_calls"):
        return "\n".join(f"Assistant called {made_by[r]} -> {r}" for r in made)
    lines = [f"Assistant: {text}"] if text else []
    for call in msg.get("tool_calls") or []:
        fn = call["function"]
        lines.append(f"Assistant called {fn['name']} {fn['arguments']}")
    return "\n".join(lines) or "Assistant: (no reply)"


def build_messages(
    *,
    history: Iterable[Any] = (),
    images: Iterable[Any] = (),
    user_text: str | None = None,
    current: str | None = None,
    attached: Iterable[str] = (),
    max_history: int = 20,
    examples: bool = True,
    transcript: bool = True,
) -> list[dict[str, Any]]:
    """The planner's messages for one model call (see the module docstring for the arguments;
    `attached`: the refs sent with this message)."""
    msgs = [m for m in (normalize_message(m) for m in history) if m is not None]
    msgs = _trim(msgs, max_history)
    if user_text is not None:
        msgs.append({"role": "user", "content": user_text.strip()})
    # the user's request (a repair exchange after it belongs to the current turn, never replaces it)
    last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user" and not m.get(REPAIR_FLAG)), default=None)
    images = list(images)
    block = images_block(images, current, attached)
    labels = ref_labels(images)
    if last_user is None:  # no user message at all: only the images block
        return [{"role": "system", "content": system_prompt(examples=examples)},
                {"role": "user", "content": block}, *msgs]
    earlier, turn = msgs[:last_user], msgs[last_user + 1:]
    earlier = [m for m in earlier if not m.get(REPAIR_FLAG)]  # finished repairs are noise to the planner
    parts = [block]
    if transcript and earlier:
        # a ref that a replayed tool result already reports keeps the assistant's words
        reported = {r for m in earlier if m["role"] == "tool" for r in _REF_IN_TEXT.findall(m["content"])}
        made_by = {r: t for r, t in _made_by(images).items() if r not in reported}
        parts.append(_labelled("Conversation so far:\n" + "\n".join(transcript_line(m, made_by) for m in earlier),
                               labels))
    parts.append(f"Message: {msgs[last_user]['content']}")
    parts.append(load_prompt("reminder.md"))
    user = {"role": "user", "content": "\n\n".join(parts)}
    turn = [{**m, "content": _labelled(m["content"], labels)} for m in turn]
    body = [user, *turn] if transcript else [*earlier, user, *turn]
    return [{"role": "system", "content": system_prompt(examples=examples)}, *body]
