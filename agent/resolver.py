"""Which image a call acts on, decided from the conversation's facts, not by the model.

The facts: the chat's versions (a tree through `parent`, oldest first, numbered `#1...` as the
planner sees them), the current image, and the photos sent with this message. The planner may
name an image by its number ("#2"), by a word of the version tree ("original", "previous") or
by ref; it need not name one at all:

- no image named: a photo sent with this message (the last one), else the current image; a
  `revert` with no image goes one step back (the current image's parent);
- "#n": the n-th image of the list; "original": the root of the current image's line;
  "previous": the current image's parent; "current" (or "latest", "last"): the current image;
- a ref: one of this chat's (any other is an error, the same for a ref that does not exist and
  for another user's);
- `references` (an edit's other photos): resolved the same way, without the scene itself and
  without repeats.

What cannot be resolved raises `PlanError` with a line the user (or the planner's repair) reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from tools.errors import ToolArgumentError


class PlanError(ToolArgumentError):
    """A planned call that names no image the chat has, or cannot be turned into the contract."""

    code = "bad_plan"


@dataclass(frozen=True)
class Version:
    """What the resolver and the answer need of one image version."""

    ref: str
    parent: str | None = None
    origin: str = "upload"  # "upload" | "generated" | "edited" or the tool that made it
    tool: str | None = None  # the tool that made it (None: an upload)
    args: dict[str, Any] = field(default_factory=dict)  # that tool's contract arguments
    desc: str = ""

    @classmethod
    def of(cls, item: Any) -> Version:
        if isinstance(item, Version):
            return item
        get = item.get if isinstance(item, dict) else (lambda k, d=None: getattr(item, k, d))
        call = get("tool_call") or {}
        origin = str(get("origin") or "upload")
        tool = call.get("name") if isinstance(call, dict) else None
        if tool is None and origin.endswith("_image") or origin == "revert":
            tool = origin
        if tool is None and origin in ("generated", "edited"):
            tool = {"generated": "generate_image", "edited": "edit_image"}[origin]
        args = (call.get("args") if isinstance(call, dict) else None) or get("args") or {}
        meta = get("metadata") or {}
        desc = get("desc") or get("description") or (meta.get("desc") if isinstance(meta, dict) else "") or ""
        return cls(ref=str(get("ref")), parent=get("parent"), origin=origin, tool=tool,
                   args=dict(args) if isinstance(args, dict) else {}, desc=str(desc))

    @property
    def uploaded(self) -> bool:
        return self.tool is None


@dataclass
class Facts:
    """The conversation's facts a call is resolved against."""

    versions: list[Version]
    current: str | None = None
    attached: list[str] = field(default_factory=list)  # refs sent with this message, in order

    @classmethod
    def of(cls, versions: Iterable[Any], current: str | None = None, attached: Iterable[str] = ()) -> Facts:
        seen: dict[str, Version] = {}
        for item in versions:
            v = Version.of(item)
            if v.ref and v.ref not in seen:
                seen[v.ref] = v
        listed = list(seen.values())
        current = current if current in seen else (listed[-1].ref if listed else None)
        return cls(listed, current, [r for r in attached if r in seen])

    # -- the tree ---------------------------------------------------------------------------
    def get(self, ref: str | None) -> Version | None:
        return next((v for v in self.versions if v.ref == ref), None)

    def number(self, ref: str) -> int | None:
        """The 1-based number a version has in the planner's list."""
        return next((i for i, v in enumerate(self.versions, 1) if v.ref == ref), None)

    def label(self, ref: str) -> str:
        n = self.number(ref)
        return f"#{n}" if n else ref

    def original(self, ref: str | None = None) -> str | None:
        node, seen = self.get(ref or self.current), set()
        while node is not None and node.parent and node.ref not in seen and self.get(node.parent):
            seen.add(node.ref)
            node = self.get(node.parent)
        return node.ref if node else None

    def previous(self, ref: str | None = None) -> str | None:
        node = self.get(ref or self.current)
        return node.parent if node is not None and self.get(node.parent) else None

    @property
    def default(self) -> str | None:
        """What "it" means: the photo sent with this message, else the current image."""
        return self.attached[-1] if self.attached else self.current


_NUMBER = re.compile(r"^\s*(?:#|no\.?\s*|image\s*|version\s*)?(\d{1,3})\s*$", re.I)
_WORDS = {
    "current": "current", "latest": "current", "last": "current", "this": "current", "it": "current",
    "original": "original", "first version": "original", "source": "original",
    "previous": "previous", "undo": "previous", "before": "previous", "parent": "previous",
}


def resolve_image(value: Any, facts: Facts, *, tool: str = "", where: str = "image") -> str:
    """The ref an image argument names (see the module docstring)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        ref = facts.previous() if tool == "revert" else facts.default
        if ref is None:
            raise PlanError(f"{tool or 'the call'}: there is no image in this chat to work on"
                            if not facts.versions else f"{tool}: there is no earlier version to go back to")
        return ref
    if not isinstance(value, str):
        raise PlanError(f"{tool}: {where} must name one image, got {type(value).__name__}")
    text = value.strip()
    if facts.get(text):
        return text
    m = _NUMBER.match(text)
    if m:
        n = int(m.group(1))
        if 1 <= n <= len(facts.versions):
            return facts.versions[n - 1].ref
        raise PlanError(f"{tool}: {where} {text!r}: this chat has images #1 to #{len(facts.versions)}"
                        if facts.versions else f"{tool}: there is no image in this chat yet")
    word = _WORDS.get(text.lower().strip(" ."))
    if word == "current" and facts.default:
        return facts.default
    if word == "original" and facts.original():
        return facts.original()
    if word == "previous" and facts.previous():
        return facts.previous()
    if not facts.versions:
        raise PlanError(f"{tool}: there is no image in this chat yet")
    raise PlanError(f"{tool}: {where} {text!r} is not an image of this chat "
                    f"(images #1 to #{len(facts.versions)})")


def resolve_images(tool: str, args: dict[str, Any], facts: Facts) -> dict[str, Any]:
    """`args` with `image` (and `references`) as refs of this chat."""
    out = dict(args)
    out["image"] = resolve_image(args.get("image"), facts, tool=tool)
    if tool == "edit_image":
        refs = args.get("references") or []
        if isinstance(refs, str):
            refs = [refs]
        resolved: list[str] = []
        for item in refs if isinstance(refs, list) else []:
            if item is None:
                continue
            ref = resolve_image(item, facts, tool=tool, where="references")
            if ref != out["image"] and ref not in resolved:
                resolved.append(ref)
        if resolved or "references" in out:
            out["references"] = resolved
    return out
