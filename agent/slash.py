"""Slash commands: `/generate a red fox --aspect 9:16`, `/relight warm left`, `/adjust exposure=+1`,
`/undo`, `/revert img_...`, `/branch img_...` become tool calls without the model.

The command words, argument aliases and the words `/relight` understands are data
(`configs/slash.yaml`). Arguments are validated against the tool contract afterwards, like any call.
"""

from __future__ import annotations

import math
import shlex
from functools import cache
from importlib import resources
from typing import Any

import yaml

from tools.errors import ToolArgumentError
from tools.schemas import ASPECT_RATIOS, DIRECTIONS, TOOL_MODELS, is_ref
from tools.store import ImageStore

_IMAGE_TOOLS = {name for name, model in TOOL_MODELS.items() if "image" in model.model_fields}
_LIST_ARGS = {"references"}
_TEXT_ARG = {"generate_image": "prompt", "edit_image": "instruction", "relight_image": "description"}


@cache
def slash_config() -> dict[str, Any]:
    return yaml.safe_load((resources.files("configs") / "slash.yaml").read_text(encoding="utf-8"))


def is_slash(text: str) -> bool:
    return text.lstrip().startswith("/") and len(text.strip()) > 1


def _value(raw: str) -> Any:
    """A key=value value: number, bool, comma list of numbers (crop), or text."""
    low = raw.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if "," in raw:
        parts = [p for p in raw.split(",") if p]
        try:
            return [float(p) for p in parts]
        except ValueError:
            return parts
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        return raw
    # `nan`, `inf`, `infinity` are words here (the contract refuses them where a number belongs); a
    # literal too large for a float (1e400) stays infinite, and parse_slash refuses it
    return raw if raw.strip().lower().lstrip("+-") in ("nan", "inf", "infinity") else number


def _too_large(value: Any) -> bool:
    """A number no setting can hold (infinite, or an int beyond 64 bits), also inside a list."""
    if isinstance(value, list):
        return any(_too_large(v) for v in value)
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63


def parse_slash(text: str, *, current: str | None = None, store: ImageStore | None = None) -> tuple[str, dict[str, Any]]:
    """`/relight warm left` -> ("relight_image", {"image": current, "color_temperature": 3200, ...})."""
    cfg = slash_config()
    try:
        words = shlex.split(text.strip()[1:])
    except ValueError as err:
        raise ToolArgumentError(f"cannot read the command: {err}") from None
    if not words:
        raise ToolArgumentError("empty command; try /generate, /relight, /adjust, /undo ...")
    command, rest = words[0].lower(), words[1:]
    tool = cfg["commands"].get(command)
    if tool is None:
        raise ToolArgumentError(
            f"unknown command /{command}; available: " + ", ".join("/" + c for c in cfg["commands"])
        )
    if tool == "undo":
        return "revert", {"image": _undo_target(current, store)}

    aliases = cfg["aliases"]
    args: dict[str, Any] = {}
    free: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word.startswith("--") and len(word) > 2:
            key, _, raw = word[2:].partition("=")
            if not raw:
                if i + 1 >= len(rest):
                    raise ToolArgumentError(f"/{command}: --{key} needs a value")
                raw, i = rest[i + 1], i + 1
        elif "=" in word and not word.startswith("="):
            key, _, raw = word.partition("=")
        else:
            free.append(word)
            i += 1
            continue
        key = aliases.get(key.lower().replace("-", "_"), key.lower().replace("-", "_"))
        value = _value(raw)
        if _too_large(value):
            raise ToolArgumentError(f"/{command}: {key}={raw} is too large a number")
        if key in _LIST_ARGS:
            args.setdefault(key, []).extend(value if isinstance(value, list) else [value])
        else:
            args[key] = value
        i += 1

    if tool in _IMAGE_TOOLS:
        refs = [w for w in free if is_ref(w)]
        free = [w for w in free if not is_ref(w)]
        if refs and "image" not in args:
            args["image"] = refs[0]
            if tool == "edit_image" and refs[1:]:
                args.setdefault("references", []).extend(refs[1:])
        if "image" not in args:
            if current is None:
                raise ToolArgumentError(f"/{command}: there is no current image; give a ref (img_...)")
            args["image"] = current
    if tool == "relight_image":
        free = _relight_words(free, args)
    if tool == "reframe_image":
        free = _reframe_words(free, args)
    if free:
        text_arg = _TEXT_ARG.get(tool)
        if text_arg is None:
            raise ToolArgumentError(f"/{command}: did not understand {' '.join(free)!r}")
        args.setdefault(text_arg, " ".join(free))
    return tool, args


def _relight_words(free: list[str], args: dict[str, Any]) -> list[str]:
    words = slash_config()["relight_words"]
    directions = DIRECTIONS
    rest = []
    for word in free:
        low = word.lower()
        if low in directions:
            args.setdefault("direction", low)
        elif low in words["color_temperature"]:
            args.setdefault("color_temperature", words["color_temperature"][low])
        elif low in words["softness"]:
            args.setdefault("softness", low)
        elif low in words["intensity"]:
            args.setdefault("intensity", words["intensity"][low])
        elif low.endswith("k") and low[:-1].isdigit():
            args.setdefault("color_temperature", int(low[:-1]))
        else:
            rest.append(word)
    return rest


def _reframe_words(free: list[str], args: dict[str, Any]) -> list[str]:
    shots = slash_config()["reframe_words"]["shot"]
    rest = []
    for word in free:
        low = word.lower()
        if low in ASPECT_RATIOS:
            args.setdefault("aspect_ratio", low)
        elif low in shots:
            args.setdefault("shot", low)
        else:
            rest.append(word)
    return rest


def _undo_target(current: str | None, store: ImageStore | None) -> str:
    if current is None:
        raise ToolArgumentError("/undo: there is no current image")
    parent = store.get(current).parent if store is not None else None
    if parent is None:
        raise ToolArgumentError(f"/undo: {current} is the first version; there is nothing to undo")
    return parent
