"""The offline default planner: Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) through llama.cpp.

A new request is decided in two steps by default (`planner.decide: two-step`, see `KINDS`): the
kind of request as one word, then that tool's arguments as one JSON object, each under a llama.cpp
grammar (the second made from that tool's schema alone, with the chat's image numbers), in one
assistant turn of the prompt `prompts/planner/decide.md` sets up. `planner.decide: one-call`
keeps the free reply below.

Two ways to get a free reply out of it (`planner.chat_format`):

- `qwen` (default): the conversation is rendered with Qwen's own chat template (tools listed in
  `<tools>` in the system turn, earlier calls replayed as `<tool_call>` blocks, tool results as
  `<tool_response>`), completed greedily, and the text parsed with `agent.planners.parsing`. The
  system turn (instructions + tool schemas) is identical on every call, so llama.cpp reuses its
  evaluated prefix and a turn only pays for the new tokens.
- `chatml-function-calling`: llama-cpp-python's generic function-calling chat handler (it decides
  between text and a call with a grammar). Kept for comparison (`atelier eval planner --set
  planner.chat_format=chatml-function-calling`).

The model file comes from `agent.planners.gguf_assets.locate_gguf` (configured path, cached
assembly of the PyPI parts, or the hub). The loaded `Llama` is cached per process and guarded by a
lock (a llama.cpp context is not thread-safe).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent.planners.base import ChatModel, PlannerReply, ToolCall, stop_check, stop_requested
from agent.planners.gguf_assets import locate_gguf
from agent.planners.parsing import format_tool_call, parse_tool_calls
from tools.errors import CancelledError, ModelUnavailableError

_LOCK = threading.Lock()
_MODELS: dict[tuple, Any] = {}

# llama.cpp asks its abort callback between the nodes of every decode, so a stop ends even the
# evaluation of a long prompt at once (llama_decode then fails; the context is cleaned up from
# its last good token by the next eval). The callback runs in llama.cpp's compute thread, where
# the turn's context variable is not set: it reads the stop check of the call holding _LOCK.
_ABORT_CHECK: list[Callable[[], bool] | None] = [None]
_ABORT_CALLBACK: Any = None  # the ctypes callback, kept alive for as long as the contexts


def _abort_requested(_data) -> bool:
    check = _ABORT_CHECK[0]
    try:
        return bool(check is not None and check())
    except Exception:  # noqa: BLE001 - a failing check never aborts a decode
        return False


def _install_abort(llm) -> None:
    global _ABORT_CALLBACK
    import llama_cpp

    try:
        if _ABORT_CALLBACK is None:
            _ABORT_CALLBACK = llama_cpp.ggml_abort_callback(_abort_requested)
        llama_cpp.llama_set_abort_callback(llm._ctx.ctx, _ABORT_CALLBACK, None)
    except (AttributeError, TypeError):  # another llama-cpp-python: stops at the next token only
        pass


@atexit.register
def _close_models() -> None:
    """Free llama.cpp contexts before interpreter shutdown (their `__del__` fails once the
    module globals are gone and prints a traceback on every exit)."""
    while _MODELS:
        _, llm = _MODELS.popitem()
        try:
            llm.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
STOP = ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]
PREFILL_CHUNK = 256  # tokens per llm.eval while preparing the system prefix (one progress line each)


def physical_cores() -> int:
    """The physical cores this process may use (SMT siblings counted once), from the CPU topology
    in /sys; half the logical CPUs where it cannot be read."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 2))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus) // 2)
    return max(1, len(cores))


def _load_llama(path: str, n_ctx: int, n_threads: int | None, chat_format: str | None):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ModelUnavailableError(
            "llama-cpp-python is not installed: pip install 'qwen-atelier[offline-llm]'"
        ) from None
    key = (path, n_ctx, n_threads, chat_format)
    with _LOCK:
        llm = _MODELS.get(key)
        if llm is None:
            kwargs: dict[str, Any] = dict(
                # default: one thread per physical core; more threads than cores makes llama.cpp
                # several times slower on an SMT CPU, fewer halves decoding on a small one
                model_path=path, n_ctx=n_ctx, n_threads=n_threads or physical_cores(),
                n_batch=512, verbose=False,
            )
            if chat_format:
                kwargs["chat_format"] = chat_format
            llm = Llama(**kwargs)
            _install_abort(llm)
            _MODELS[key] = llm
        return llm


def _usage(raw: dict[str, Any] | None) -> dict[str, int]:
    """llama.cpp's usage of one call (both steps of a two-step decision added up)."""
    raw = raw or {}
    return {k: int(raw.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}


def _compact(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _prop_type(prop: dict[str, Any]) -> str:
    options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        prop = {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    if "enum" in prop:
        return "|".join(_compact(v) for v in prop["enum"])
    if "const" in prop:
        return _compact(prop["const"])
    kind = prop.get("type")
    if kind == "string":
        return "img_ref" if str(prop.get("pattern", "")).startswith("^img_") else "string"
    if kind in ("integer", "number"):
        name = "int" if kind == "integer" else "number"
        if "minimum" in prop and "maximum" in prop:
            lo, hi = (v if isinstance(v, int) else f"{v:g}" for v in (prop["minimum"], prop["maximum"]))
            return f"{name} {lo}..{hi}"
        return name
    if kind == "boolean":
        return "bool"
    if kind == "array":
        if prop.get("prefixItems"):
            return "[" + ", ".join(_prop_type(i) for i in prop["prefixItems"]) + "]"
        return "list of " + _prop_type(prop.get("items") or {})
    return "any"


_GENERIC_REF_NOTE = "Short id of a stored image version"


def tool_signature(tool: dict[str, Any]) -> str:
    """One compact line per tool: `name(arg: type, opt?: type = default) - description`.

    Derived from the JSON schema (enums, ranges, defaults kept; the nullable wrappers and titles
    that make up most of a pydantic schema dropped): about a fifth of the tokens of the schema,
    which matters for a CPU planner that pays for every prompt token.
    """
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {}
    required = set(params.get("required") or [])
    args = []
    for name, prop in (params.get("properties") or {}).items():
        text = f"{name}{'' if name in required else '?'}: {_prop_type(prop)}"
        default = prop.get("default")
        if default not in (None, [], {}):
            text += f" = {_compact(default)}"
        note = (prop.get("description") or "").strip()
        if note and not note.startswith(_GENERIC_REF_NOTE):  # a ref's own role is kept, the generic note not
            text += f" ({note})"
        args.append(text)
    desc = (fn.get("description") or "").strip()
    return f"{fn['name']}({', '.join(args)})" + (f" - {desc}" if desc else "")


_REF_RE = __import__("re").compile(r"\bimg_[0-9a-f]{8,64}\b")
_NUMBERED = __import__("re").compile(r"^#(\d+) ", __import__("re").M)


def _grammar_prop(prop: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    if prop.get("x-image"):  # an image the planner names: one of the chat's ("#2", "original", ...)
        return {"enum": refs}
    if prop.get("x-images"):
        return {"type": "array", "items": {"enum": refs}, "maxItems": 3}
    if "enum" in prop:  # the choices the planner sees (e.g. shapes in words), over the type's own
        return {"enum": prop["enum"]}
    options = [o for o in prop.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        prop = options[0]
    if str(prop.get("pattern", "")).startswith("^img_"):
        return {"enum": refs}
    if "enum" in prop:
        return {"enum": prop["enum"]}
    kind = prop.get("type")
    if kind == "array":
        if prop.get("prefixItems"):
            return {"type": "array", "prefixItems": [_grammar_prop(i, refs) for i in prop["prefixItems"]],
                    "minItems": len(prop["prefixItems"]), "maxItems": len(prop["prefixItems"])}
        out = {"type": "array", "items": _grammar_prop(prop.get("items") or {}, refs)}
        if "maxItems" in prop:
            out["maxItems"] = prop["maxItems"]
        return out
    if kind in ("string", "integer", "number", "boolean"):
        return {"type": kind}
    return {}


def tool_call_schema(tools: list[dict[str, Any]], refs: list[str]) -> dict[str, Any]:
    """JSON schema of one `{"name", "arguments"}` call: valid tool names and enums, image
    arguments limited to the refs of this conversation (tools that need an image are left out
    when there is none)."""
    calls = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        required = list(params.get("required") or [])
        needs_ref = any(_grammar_prop(props[r], ["x"]).get("enum") == ["x"] for r in required if r in props)
        if needs_ref and not refs:
            continue
        args = {
            "type": "object",
            "properties": {k: _grammar_prop(v, refs) for k, v in props.items()
                           if refs or _grammar_prop(v, ["x"]) != {"enum": ["x"]}
                           and not (_grammar_prop(v, ["x"]).get("items") == {"enum": ["x"]})},
            "required": required,
            "additionalProperties": False,
        }
        calls.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": args},
                      "required": ["name", "arguments"], "additionalProperties": False})
    return {"oneOf": calls}


def reply_openers() -> list[str]:
    """How a plain-text reply may begin while deciding a request (prompts/planner/reply_openers.txt)."""
    from agent.prompting import load_prompt

    return [line.strip() for line in load_prompt("reply_openers.txt").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def tool_grammar_text(tools: list[dict[str, Any]], refs: list[str], *, openers: list[str] | None = None) -> str:
    """GBNF for a reply that is either plain text or one call (a Qwen `<tool_call>` block or a
    json code fence) whose JSON follows `tool_call_schema` (tool names, enums, refs always valid)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    call = json_schema_to_gbnf(json.dumps(tool_call_schema(tools, refs)))
    call = call.replace("root ::=", "call ::=", 1)
    # a call may come in Qwen's tags or (as small models like to) in a json code fence: both are
    # constrained; plain text cannot contain a call's characters, so no call escapes the schema
    if openers:  # deciding a request: a text reply greets, asks or declines (never "Done: ...")
        plain = "plain ::= (" + " | ".join(json.dumps(o) for o in openers) + ") [^<{`]*\n"
    else:
        plain = "plain ::= [^<{`\\n] [^<{`]*\n"
    return (
        'root ::= "<tool_call>\\n" call "\\n</tool_call>" | "```json\\n" call "\\n```" | plain\n'
        + plain + call
    )


# The two-step decision (`planner.decide: two-step`, the default): the model first names the
# kind of request, one word under a grammar, then writes that kind's arguments as one JSON object
# under a grammar made from that tool's schema alone (or a reply, for `reply`). Both steps
# continue one assistant turn ("kind: relight\narguments: {...}"), so the second pays only for the
# few tokens after the first, and the system turn (prompts/planner/decide.md + the tool list) is
# the same on every call: its evaluated state is kept like the one-call prompt's.
# The kind words are the tools' own verbs: on the dev and fresh sets' edit, relight, reframe and
# adjust cases they routed 82/85 right, the words new/content/light/camera/settings/undo 76/85.
KINDS = {"generate": "generate_image", "edit": "edit_image", "relight": "relight_image", "reframe": "reframe_image",
         "adjust": "adjust_image", "revert": "revert", "reply": None}


def _deciding(messages: list[dict[str, Any]]) -> bool:
    """A request to decide (the conversation ends with the user's message or a repair request),
    not a call after tool results."""
    return bool(messages) and messages[-1].get("role") == "user"


def decide_head(tools: list[dict[str, Any]]) -> str:
    """The system turn of the two-step decision: how to decide, then the tool list."""
    from agent.prompting import load_prompt

    listed = "\n".join(tool_signature(t) for t in tools)
    return f"<|im_start|>system\n{load_prompt('decide.md')}\n\nTools:\n{listed}<|im_end|>\n"


def _call_text(msg: dict[str, Any]) -> str:
    parts = [str(msg.get("content") or "").strip()]
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or call
        args = fn.get("arguments", fn.get("args", {}))
        parts.append(f"{fn.get('name', '')} {args if isinstance(args, str) else _compact(args)}")
    return " ".join(p for p in parts if p)


def decide_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The two-step prompt up to the kind word: the system turn, the request as
    `agent.prompting.build_messages` wrote it (images, conversation, message; its one-call
    reminder left out) with a repair exchange of this turn told after it, then `kind:`."""
    from agent.prompting import load_prompt, turn_texts

    first = next(i for i, m in enumerate(messages) if m.get("role") == "user")
    content = str(messages[first].get("content") or "").strip()
    reminder = load_prompt("reminder.md")
    if content.endswith(reminder):
        content = content[: -len(reminder)].rstrip()
    texts = turn_texts()
    for msg in messages[first + 1:]:
        text = _call_text(msg)
        if not text:
            continue
        key = "decide_earlier" if msg.get("role") == "assistant" else "decide_problem"
        content += "\n" + texts[key].format(text=text).strip()
    return decide_head(tools) + f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\nkind:"


def _image_prop(prop: dict[str, Any]) -> bool:
    return bool(prop.get("x-image") or prop.get("x-images")) or _grammar_prop(prop, ["x"]) in (
        {"enum": ["x"]}, {"type": "array", "items": {"enum": ["x"]}, "maxItems": 3})


def arguments_schema(tool: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    """JSON schema of one tool's arguments for the grammar: its names, enums and types, image
    arguments limited to the chat's images (left out when there are none)."""
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {}
    props, required = {}, list(params.get("required") or [])
    # with two images or more the image a call works on is always named, "current" first (for
    # revert "previous" first: the version on screen is not one to go back to), and an edit says
    # which photos it brings in (maybe none): a small model that may leave them out leaves them
    # out even for "the second one" or "add him to the group photo"
    choose = sum(1 for r in refs if r.startswith("#")) >= 2
    for name, prop in (params.get("properties") or {}).items():
        if _image_prop(prop) and not refs:
            continue
        props[name] = _grammar_prop(prop, refs)
        if choose and props[name].get("items") == {"enum": refs}:  # what an edit brings in: said, even if none
            required.append(name)
        if choose and props[name] == {"enum": refs}:
            if fn["name"] == "revert":
                props[name] = {"enum": ["previous", *(r for r in refs if r != "previous")]}
            else:
                props[name] = {"enum": ["current", *refs]}
            required.append(name)
    return {"type": "object", "properties": props,
            "required": [r for r in dict.fromkeys(required) if r in props], "additionalProperties": False}


def kind_grammar_text(kinds: list[str]) -> str:
    return "root ::= " + " | ".join(json.dumps(" " + k) for k in kinds) + "\n"


def arguments_grammar_text(tool: dict[str, Any], refs: list[str]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    body = json_schema_to_gbnf(json.dumps(arguments_schema(tool, refs))).replace("root ::=", "args ::=", 1)
    return 'root ::= " " args\n' + body


def image_choices(messages: list[dict[str, Any]]) -> list[str]:
    """How the planner may name this chat's images: their numbers in the images list (and refs a
    client wrote), then "original" and "previous"."""
    refs: list[str] = []
    for m in messages[1:]:
        text = str(m.get("content") or "")
        for ref in [*(f"#{n}" for n in _NUMBERED.findall(text)), *_REF_RE.findall(text)]:
            if ref not in refs:
                refs.append(ref)
    return refs + ["original", "previous"] if refs else []


def render_qwen(messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, compact: bool = True) -> str:
    """OpenAI-style messages + tool schemas -> Qwen2.5 chat-template text ending at the assistant turn."""
    system = ""
    rest = messages
    if messages and messages[0].get("role") == "system":
        system, rest = messages[0].get("content") or "", messages[1:]
    out = []
    sys_text = system or "You are a helpful assistant."
    if tools:
        listed = (tool_signature(t) for t in tools) if compact else (_compact(t) for t in tools)
        sys_text += "\n\n" + TOOLS_PREAMBLE + "\n".join(listed) + TOOLS_POSTAMBLE
    out.append(f"<|im_start|>system\n{sys_text}<|im_end|>\n")
    i = 0
    while i < len(rest):
        m = rest[i]
        role = m.get("role")
        if role == "user":
            out.append(f"<|im_start|>user\n{m.get('content') or ''}<|im_end|>\n")
        elif role == "assistant":
            parts = [m.get("content") or ""]
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or call
                args = fn.get("arguments", fn.get("args", {}))
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass
                parts.append(format_tool_call(fn.get("name", ""), args))
            body = "\n".join(p for p in parts if p)
            out.append(f"<|im_start|>assistant\n{body}<|im_end|>\n")
        elif role == "tool":  # consecutive tool results share one user turn
            responses = []
            while i < len(rest) and rest[i].get("role") == "tool":
                responses.append(f"<tool_response>\n{rest[i].get('content') or ''}\n</tool_response>")
                i += 1
            out.append("<|im_start|>user\n" + "\n".join(responses) + "<|im_end|>\n")
            continue
        i += 1
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def repair_tool_names(reply: PlannerReply, tools: list[dict[str, Any]]) -> PlannerReply:
    """A call to a tool that does not exist (`crop`, `rotate_image`) is renamed to the one tool
    whose parameters include all of its arguments besides `image`; otherwise it is left as is."""
    params = {}
    for tool in tools:
        fn = tool.get("function", tool)
        params[fn["name"]] = set(((fn.get("parameters") or {}).get("properties") or {}))
    for call in reply.tool_calls:
        keys = set(call.args) - {"image"}
        if call.name in params or not keys:
            continue
        fits = [name for name, props in params.items() if keys <= props and "image" in props]
        if len(fits) == 1:
            call.name = fits[0]
    return reply


def default_system_message() -> dict[str, Any]:
    """The system message a chat turn sends, from agent.prompting (the same builder the graph
    and the planner eval use), so the prepared prefix follows any change of the prompt texts."""
    from agent.prompting import build_messages

    return build_messages(history=[], images=[], user_text="hi")[0]


def prepare_prompt(settings, root: str | os.PathLike | None = None, *,
                   on_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Install-time step (`make model`): load the planner's GGUF the way a session does and save
    the evaluated state of the system prefix (agent.prompting's system message + the tool list of
    `agent.intents.plan_json_schemas`, what the turn sends), so the first chat turn restores it instead of computing it.
    Returns `GGUFPlanner.prepare`'s dict; `state` is "restored" when it was already prepared."""
    planner = GGUFPlanner(settings, root=None if root is None else str(root))
    planner.on_status = on_status
    return planner.prepare()


def prefix_state_path(folder: Path, llm, model_path: str, prefix: list[int], variant: str = "") -> Path:
    """Where the evaluated state of `prefix` is kept: one file per llama.cpp version, model file,
    context size and kind (`variant`, e.g. "embeddings") and prefix tokens."""
    import llama_cpp

    key = hashlib.sha256(json.dumps([
        llama_cpp.__version__, str(model_path), os.path.getsize(model_path), llm.n_ctx(), prefix,
    ] + ([variant] if variant else [])).encode()).hexdigest()[:24]
    return folder / f"{key}.state"


def restore_prefix(llm, path: Path, prefix: list[int]) -> bool:
    """Load the saved state of `prefix` into `llm` (True), or leave it as it is (False: no file,
    another prefix, a state of another build)."""
    import llama_cpp

    n = len(prefix)
    if not path.is_file():
        return False
    try:
        data = path.read_bytes()
        state = data[4 * n:]
        ids = list(memoryview(data[: 4 * n]).cast("i"))
        if ids != prefix:
            return False
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_set_data(llm._ctx.ctx, buf, len(state)) != len(state):
            return False
    except (OSError, ValueError):
        return False
    llm.input_ids[:n] = prefix
    llm.n_tokens = n
    return True


def evaluate_prefix(llm, prefix: list[int], report: Callable[[str], None]) -> None:
    """Evaluate `prefix` from an empty context in chunks of `PREFILL_CHUNK` tokens, reporting an
    estimate from the rate of the first chunk and then the progress (" (first run on this
    machine): ~40 s for 3,182 tokens (80 tokens/s)", ": 37% (..., ~25 s left)")."""
    t0 = time.perf_counter()
    n = len(prefix)
    llm.reset()
    done = 0
    while done < n:
        _raise_if_stopped()  # the stop button between chunks (a first run's preparation takes minutes)
        chunk = prefix[done: done + PREFILL_CHUNK]
        t_chunk = time.perf_counter()
        llm.eval(chunk)
        first = done == 0
        done += len(chunk)
        elapsed = time.perf_counter() - t0
        if first and done < n:
            rate = len(chunk) / max(time.perf_counter() - t_chunk, 1e-6)
            report(f" (first run on this machine): ~{(n - done) / rate:.0f} s for {n:,} tokens ({rate:.0f} tokens/s)")
        elif done < n:
            left = (n - done) * elapsed / done
            report(f": {100 * done // n}% ({done:,}/{n:,} tokens, ~{left:.0f} s left)")


def save_prefix(llm, path: Path, prefix: list[int]) -> None:
    """Save the evaluated state of `prefix` (the context must hold exactly it) for `restore_prefix`;
    a read-only data dir only costs speed."""
    import array

    import llama_cpp

    size = llama_cpp.llama_state_get_size(llm._ctx.ctx)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_get_data(llm._ctx.ctx, buf, size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(array.array("i", prefix).tobytes() + bytes(buf)[:written])
        os.replace(tmp, path)
    except OSError:
        pass


def _stop_criteria():
    """llama.cpp ends generation at the next token once the turn was asked to stop."""
    from llama_cpp import StoppingCriteriaList

    return StoppingCriteriaList([lambda _ids, _logits: stop_requested()])


def _raise_if_stopped() -> None:
    if stop_requested():
        raise CancelledError("stopped by the user")


class GGUFPlanner(ChatModel):
    """`ChatModel` over a local GGUF Qwen model (see the module docstring)."""

    name = "gguf"
    sees_images = False

    def __init__(self, settings, *, model_path: str | None = None, root: str | None = None):
        self.settings = settings
        self.chat_format = getattr(settings, "chat_format", None) or "qwen"
        self.two_step = (getattr(settings, "decide", None) or "two-step") == "two-step"
        self._model_path = model_path
        self._root = root
        self._llm = None
        self._prefix_path: Path | None = None
        self.last_timing: dict[str, Any] = {}
        self._grammars: dict[tuple, str] = {}
        # Where `_warm_prefix` reports the one-time preparation of the system prefix (a few lines:
        # the estimate, then progress after each chunk); None: stderr. A caller that shows
        # progress sets it before `chat`, e.g. a graph node:
        #     planner.on_status = lambda text: _emit("status", text=text)
        # (`chat` runs inside the node, so the stream writer is the node's). It is called with the
        # planner's lock held: it must not call back into the planner.
        self.on_status: Callable[[str], None] | None = None
        # how the last call got its system prefix: "loaded" (already in the context), "restored"
        # (from the saved state), "computed" (evaluated now, then saved), "uncached" (no cache dir)
        self.prefix_state: str | None = None

    @property
    def llm(self):
        if self._llm is None:
            path = self._model_path or str(locate_gguf(self.settings, root=self._root))
            self._path = path
            native = self.chat_format == "qwen"
            self._llm = _load_llama(path, self.settings.n_ctx, self.settings.n_threads,
                                    None if native else self.chat_format)
        return self._llm

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PlannerReply:
        if self._llm is None and self.on_status is not None:  # a chat shows why its first turn waits
            self._status("loading the planner model (once after a start)")
        llm = self.llm
        t0 = time.perf_counter()
        with _LOCK:
            _ABORT_CHECK[0] = stop_check()
            try:
                if self.chat_format == "qwen" and self.two_step and _deciding(messages) and tools:
                    reply = self._chat_two_step(llm, messages, tools)
                elif self.chat_format == "qwen":
                    reply = self._chat_native(llm, messages, tools)
                else:
                    reply = self._chat_handler(llm, messages, tools)
            except RuntimeError as err:  # "llama_decode returned 2": aborted by a stop
                if stop_requested():
                    raise CancelledError("stopped by the user") from None
                raise
            finally:
                _ABORT_CHECK[0] = None
            reply.usage = _usage(self.last_usage)  # read under the lock: this call's, not another session's
        self.last_timing = {"seconds": time.perf_counter() - t0, "prefix": self.prefix_state}
        return reply

    @staticmethod
    def system_prefix(system: dict[str, Any] | None, tools: list[dict[str, Any]]) -> str:
        """The text of the system turn the planner sends (instructions + tool list), as
        `render_qwen` renders it at the head of every prompt: the part `_warm_prefix` keeps.
        `system`: the conversation's system message (None: Qwen's default)."""
        head = render_qwen([system] if system else [], tools)
        return head.rsplit("<|im_start|>assistant", 1)[0]

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            try:
                self.on_status(text)
                return
            except Exception:  # noqa: BLE001 - a broken progress display must not stop planning
                pass
        print(f"atelier: {text}", file=sys.stderr, flush=True)

    def prepare(self, tools: list[dict[str, Any]] | None = None, system: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make sure the saved state of the system prefix exists (computing it if not) and is
        loaded; `system`/`tools` default to what a chat turn sends (see `default_system_message`,
        `agent.intents.plan_json_schemas`: the tools the turn sends). Returns {"state", "tokens", "seconds", "path"}."""
        if self.chat_format != "qwen":  # the chat handler renders its own prompt: nothing to keep
            return {"state": "not used", "tokens": 0, "seconds": 0.0, "path": None}
        if tools is None:
            from agent.intents import plan_json_schemas

            tools = plan_json_schemas()
        if system is None:
            system = default_system_message()
        llm = self.llm
        t0 = time.perf_counter()
        with _LOCK:
            head = decide_head(tools) if self.two_step else self.system_prefix(system, tools)
            tokens = llm.tokenize(head.encode("utf-8"), add_bos=False, special=True)
            self._warm_prefix(llm, tokens, len(tokens))
        return {"state": self.prefix_state, "tokens": len(tokens), "seconds": time.perf_counter() - t0,
                "path": str(self._prefix_path) if self._prefix_path else None}

    def _prefix_cache_dir(self) -> Path | None:
        if os.environ.get("ATELIER_PROMPT_CACHE", "1") == "0":
            return None
        from agent.planners.gguf_assets import models_dir

        return models_dir(self._root) / "prompt-cache"

    def _warm_prefix(self, llm, tokens: list[int], prefix_len: int) -> None:
        """Restore (or compute once and save) llama.cpp's state for the fixed system prefix.

        The system turn (instructions, routing rules, tool list) is the same for every call; its
        evaluated state is kept on disk (`<models dir>/prompt-cache/<key>.state`, written by
        `make model` through `prepare_prompt`) so a new process (`atelier chat ...`) pays only for
        the conversation tokens. In one process llama.cpp already reuses the common prefix of the
        previous call, so this only acts when the loaded context does not start with the prefix.
        When the state has to be computed here, the prefix is evaluated in chunks of
        `PREFILL_CHUNK` tokens and reported through `on_status` (or stderr): an estimate from the
        rate of the first chunk, then the progress after each chunk.
        """
        prefix = tokens[:prefix_len]
        self._prefix_path = None
        current = list(llm._input_ids[:prefix_len]) if llm.n_tokens >= prefix_len else []
        if current == prefix:
            self.prefix_state = "loaded"
            return
        folder = self._prefix_cache_dir()
        if folder is None:
            self.prefix_state = "uncached"
            return
        path = prefix_state_path(folder, llm, self._path, prefix)
        self._prefix_path = path
        n = len(prefix)
        if restore_prefix(llm, path, prefix):
            self.prefix_state = "restored"
            return
        t0 = time.perf_counter()
        self._status(f"preparing the planner (first run on this machine): {n:,} tokens, measuring the speed ...")
        evaluate_prefix(llm, prefix, lambda text: self._status(f"preparing the planner{text}"))
        save_prefix(llm, path, prefix)
        self.prefix_state = "computed"
        self._status(f"planner ready ({n:,} tokens prepared in {time.perf_counter() - t0:.0f} s)")

    def _grammar(self, messages, tools):
        from llama_cpp import LlamaGrammar

        refs = image_choices(messages)
        deciding = _deciding(messages)
        key = (json.dumps(tools, sort_keys=True), tuple(refs), deciding)
        text = self._grammars.get(key)
        if text is None:
            text = tool_grammar_text(tools, refs, openers=reply_openers() if deciding else None)
            self._grammars = {key: text}  # one conversation at a time: keep only the latest
        return LlamaGrammar.from_string(text, verbose=False)

    def _budget(self, tokens: list[int]) -> int:
        """The tokens left to generate after a prompt of `tokens` (an error when it barely fits)."""
        budget = self.settings.n_ctx - len(tokens)
        if budget < 16:
            raise ModelUnavailableError(
                f"the conversation ({len(tokens)} tokens) no longer fits the planner's context ({self.settings.n_ctx})"
            )
        return budget

    def _close_bias(self, llm) -> dict[int, float] | None:
        """`planner.close_bias` added to the logits of the tokens that close the arguments' object:
        a prior for writing only the arguments the user asked for (0: none)."""
        bias = float(getattr(self.settings, "close_bias", 0.0) or 0.0)
        if not bias:
            return None
        ids = set()
        for text in ("}", " }", '"}', '"]}', "]}", " ]}"):  # what closes the object after any value
            tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
            if len(tokens) == 1:
                ids.add(tokens[0])
        return {t: bias for t in ids}

    def _complete(self, llm, prompt: str, grammar_text: str | None, max_tokens: int, stop: list[str],
                  logit_bias: dict[int, float] | None = None) -> str:
        from llama_cpp import LlamaGrammar

        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        budget = self._budget(tokens)
        grammar = LlamaGrammar.from_string(grammar_text, verbose=False) if grammar_text else None
        extra = {"logit_bias": logit_bias} if logit_bias else {}
        out = llm.create_completion(tokens, max_tokens=min(max_tokens, budget), grammar=grammar, temperature=0.0,
                                    top_k=1, stop=stop, stopping_criteria=_stop_criteria(), **extra)
        _raise_if_stopped()
        usage = out.get("usage", {})
        for key in ("prompt_tokens", "completion_tokens"):
            self.last_usage[key] = self.last_usage.get(key, 0) + int(usage.get(key) or 0)
        return out["choices"][0]["text"]

    def _chat_two_step(self, llm, messages, tools) -> PlannerReply:
        """The kind of request (one word), then that tool's arguments (see `KINDS`)."""
        by_name = {(t.get("function", t))["name"]: t for t in tools}
        refs = image_choices(messages)
        # with no image in the chat there is nothing to change: a picture to make, or words
        # (a request to change a photo that was not sent is answered by asking for it)
        kinds = [k for k, name in KINDS.items()
                 if name is None or name in by_name and (refs or name == "generate_image")]
        prompt = decide_prompt(messages, tools)
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        head = decide_head(tools)
        head_tokens = llm.tokenize(head.encode("utf-8"), add_bos=False, special=True)
        if 0 < len(head_tokens) < len(tokens) and tokens[: len(head_tokens)] == head_tokens:
            self._warm_prefix(llm, tokens, len(head_tokens))
        self.last_usage = {}
        t0 = time.perf_counter()
        kind = self._complete(llm, prompt, kind_grammar_text(kinds), 4, STOP).strip()
        seconds_kind = time.perf_counter() - t0
        if kind not in KINDS:  # the grammar allows nothing else; a truncated word reads as a reply
            kind = "reply"
        prompt += f" {kind}\n"
        name = KINDS[kind]
        if name is None:
            text = self._complete(llm, prompt + "reply:", None, min(self.settings.max_tokens, 96), ["\n", *STOP]).strip()
            self.last_decision = {"kind": kind, "seconds_kind": seconds_kind}
            return PlannerReply(text=text, raw=f"kind: {kind}\nreply: {text}")
        key = (name, tuple(refs))
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = arguments_grammar_text(by_name[name], refs)
            self._grammars = {k: v for k, v in list(self._grammars.items())[-15:]}
            self._grammars[key] = grammar
        text = self._complete(llm, prompt + "arguments:", grammar, min(self.settings.max_tokens, 320), STOP,
                              self._close_bias(llm)).strip()
        self.last_decision = {"kind": kind, "seconds_kind": seconds_kind}
        raw = f"kind: {kind}\narguments: {text}"
        try:
            args = json.loads(text)
        except ValueError:
            return PlannerReply(raw=raw, malformed=[text])
        return PlannerReply(tool_calls=[ToolCall(name=name, args=args if isinstance(args, dict) else {})], raw=raw)

    def _chat_native(self, llm, messages, tools) -> PlannerReply:
        prompt = render_qwen(messages, tools)
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        # the system turn alone (everything before the first user/assistant turn)
        system = messages[0] if messages and messages[0].get("role") == "system" else None
        head = self.system_prefix(system, tools)
        head_tokens = llm.tokenize(head.encode("utf-8"), add_bos=False, special=True)
        if 0 < len(head_tokens) < len(tokens) and tokens[: len(head_tokens)] == head_tokens:
            self._warm_prefix(llm, tokens, len(head_tokens))
        budget = self._budget(tokens)
        grammar = self._grammar(messages, tools) if getattr(self.settings, "grammar", False) else None
        out = llm.create_completion(
            tokens, max_tokens=min(self.settings.max_tokens, budget), grammar=grammar,
            temperature=self.settings.temperature, top_k=1 if self.settings.temperature == 0 else 40,
            stop=STOP, stopping_criteria=_stop_criteria(),
        )
        _raise_if_stopped()
        text = out["choices"][0]["text"]
        self.last_usage = out.get("usage", {})
        return repair_tool_names(parse_tool_calls(text), tools)

    def _chat_handler(self, llm, messages, tools) -> PlannerReply:
        # the handler turns each schema into a grammar: llama.cpp refuses (and crashes on) the
        # repetitions of pydantic's maxLength/ranges, so it gets the same types without them
        lean = []
        for tool in tools:
            fn = tool.get("function", tool)
            params = fn.get("parameters") or {}
            props = {k: _grammar_prop(v, []) or {"type": "string"} for k, v in (params.get("properties") or {}).items()}
            for k, v in props.items():
                if v.get("enum") == []:  # an image ref: any string
                    props[k] = {"type": "string"}
                elif v.get("items", {}).get("enum") == []:
                    props[k] = {"type": "array", "items": {"type": "string"}}
            lean.append({"type": "function", "function": {
                "name": fn["name"], "description": fn.get("description", ""),
                "parameters": {"type": "object", "properties": props, "required": params.get("required", [])}}})
        out = llm.create_chat_completion(
            messages=messages, tools=lean, tool_choice="auto",
            max_tokens=self.settings.max_tokens, temperature=self.settings.temperature,
        )
        msg = out["choices"][0]["message"]
        self.last_usage = out.get("usage", {})
        calls = []
        malformed = []
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except ValueError:
                malformed.append(fn.get("arguments") or "")
                continue
            calls.append(ToolCall(name=fn.get("name", ""), args=args if isinstance(args, dict) else {}))
        text = msg.get("content") or ""
        if not calls and "<tool_call>" in text:
            return parse_tool_calls(text)
        return PlannerReply(text=text.strip(), tool_calls=calls, raw=json.dumps(msg), malformed=malformed)
