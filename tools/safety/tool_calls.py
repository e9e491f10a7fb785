"""Screening of a tool call (written by the planner, a slash command, an MCP or HTTP client):
every text that steers the image, and consent for edits that change how a real person in an
uploaded photo looks (once per person per session).

- The rules read each text field on its own; the guard reads them together, as one request
  ("prompt", then "negative prompt: ..."), with the chat's earlier messages and what made the
  image being edited. A negative prompt is a request too: "clothing, underwear" there asks for
  nudity. The lists of what to avoid count only their jailbreaks on the rules' side (a negative
  prompt of "blood, gore" is how one asks for none).
- A rules refusal stands unless the guard's release head is sure the rules matched a harmless
  word (as in `PromptScreener.screen`).
- Consent: the image (or an image brought in) descends from an upload in which the face analyser
  found faces, and the edit changes how a person looks (the guard's judgement in any language;
  the word list without a guard), or brings people into another photo, or turns identity
  preservation off.
"""

from __future__ import annotations

from typing import Any

from tools.safety.guard import ScreenContext
from tools.safety.screener import Decision, PromptScreener, guard_refusal, reasons, releasable
from tools.schemas import ToolArgs

# Arguments that are free text (the rest are enums, numbers and refs).
TEXT_FIELDS = ("prompt", "instruction", "region", "description")
NEGATIVE_FIELDS = ("negative_prompt",)  # lists what to avoid


def _strings(args: ToolArgs, fields) -> list[tuple[str, str]]:
    out = []
    for name in fields:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.strip():
            out.append((name, value))
    return out


def _uploaded_root(store, ref: str) -> str | None:
    """The upload a version descends from, or None when it was generated from text."""
    try:
        lineage = store.lineage(ref)
    except Exception:  # noqa: BLE001 - unknown refs are reported by run_tool, not here
        return None
    root = lineage[0] if lineage else None
    return root.ref if root is not None and root.origin == "upload" else None


def person_keys(store, ref: str, analyzer=None) -> list[str]:
    """Keys of the real people in an uploaded photo: `<upload ref>#<face index>` (left to right),
    or `<upload ref>` when no face analyser is available. Empty when the image is not an upload
    or has no face."""
    root = _uploaded_root(store, ref)
    if root is None:
        return []
    if analyzer is None:
        return [root]
    try:
        faces = analyzer.faces(store.open(root))
    except Exception:  # noqa: BLE001 - analyser failure: fall back to one key per photo
        return [root]
    return [f"{root}#{i}" for i in range(len(faces))]


def screen_tool_call(
    screener: PromptScreener,
    name: str,
    args: ToolArgs,
    *,
    store,
    consented: list[str] | set[str] = (),
    analyzer=None,
    context: ScreenContext | None = None,
) -> Decision:
    """Refuse when a text of the call is refused; ask for consent before an edit that changes how
    a person of an uploaded photo looks, for people not yet in `consented`; otherwise allow.
    `context`: the chat's earlier messages (the guard reads them)."""
    refusals = []  # (text, the rules' refusal) of every field
    for field, text in _strings(args, TEXT_FIELDS):
        decision = screener.screen(text, guard=False)
        if decision.decision == "refuse":
            refusals.append((text, decision.model_copy(update={"matched": f"{field}: {decision.matched}"})))
    for field, text in _strings(args, NEGATIVE_FIELDS):
        decision = screener.screen(text, guard=False)
        if decision.decision == "refuse" and decision.category == "jailbreak":
            refusals.append((text, decision.model_copy(update={"matched": f"{field}: {decision.matched}"})))
    rules_refusal = refusals[0][1] if refusals else None
    refs = [r for r in [getattr(args, "image", None), *(getattr(args, "references", None) or [])] if r]
    people: list[str] = []
    if name == "edit_image":
        for ref in refs:
            people += person_keys(store, ref, analyzer)
    verdict = None
    request = _guard_request(args) if screener.guard is not None else ""
    if request:
        ctx = (context or ScreenContext()).model_copy(update={
            "chain": image_history(store, refs[0]) if refs else [], "people": bool(people),
            "field": "prompt" if getattr(args, "prompt", None) else "instruction"})
        if rules_refusal is not None:
            if not getattr(screener.guard, "releases", False) or not all(releasable(d, t) for t, d in refusals) \
                    or len({d.category for _, d in refusals}) > 1:
                return rules_refusal
            verdict = screener.guard.judge(request, ctx, rules_refused=True)
            if not verdict.release:
                return rules_refusal.model_copy(update={"guard": verdict})
            if verdict.refuse:
                return guard_refusal(verdict)
        else:
            verdict = screener.guard.judge(request, ctx)
            if verdict.refuse:
                return guard_refusal(verdict)
    elif rules_refusal is not None:
        return rules_refusal
    if name != "edit_image":
        return Decision(guard=verdict)
    if verdict is not None:
        changes_identity = verdict.changes_person
    else:
        changes_identity = screener.changes_person(" ".join(t for _, t in _strings(args, ("instruction", "region"))))
    changes_identity = changes_identity or not args.preserve_identity
    brings_people_together = bool(args.references) and bool(people)
    if not people or not (changes_identity or brings_people_together):
        return Decision(guard=verdict)
    missing = [p for p in dict.fromkeys(people) if p not in set(consented)]
    if not missing:
        return Decision(reason="consent already given for everyone in the photo", guard=verdict)
    return Decision(decision="consent", category="consent", reason=reasons()["consent"]["reason"], matched=missing,
                    guard=verdict)


def _guard_request(args: ToolArgs) -> str:
    """The call's texts as one request for the guard: the prompt or instruction (with the region),
    the description, then what it must not show."""
    parts = [t for _, t in _strings(args, TEXT_FIELDS)]
    negative = [t for _, t in _strings(args, NEGATIVE_FIELDS)]
    if negative:
        parts.append("negative prompt: " + "; ".join(negative))
    return "\n".join(parts)


def image_history(store, ref: str) -> list[str]:
    """The prompts and instructions that made `ref` (oldest first)."""
    try:
        lineage = store.lineage(ref)
    except Exception:  # noqa: BLE001 - unknown refs are reported by run_tool
        return []
    out = []
    for version in lineage:
        call_args = (version.tool_call or {}).get("args") or {}
        out += [str(call_args[f]) for f in TEXT_FIELDS if isinstance(call_args.get(f), str) and call_args[f].strip()]
    return out


def person_faces(store, keys: list[str], analyzer=None) -> list[dict[str, Any]]:
    """Each key of `person_keys` as a person reads it, with where its face is: {"key", "label",
    "ref", "box"}. The label is "face 1 (the person on the left)", numbered from 1 left to right as
    in every note and check (" in <upload ref>" added when the keys come from more than one photo,
    "the people in <upload ref>" for a whole-photo key); `box` (left, top, right, bottom) in `ref`,
    None when no analyser found it."""
    from tools.identity import face_labels

    roots = list(dict.fromkeys(key.split("#", 1)[0] for key in keys))
    found: dict[str, tuple[list[str], list[tuple[int, int, int, int]]] | None] = {}
    out = []
    for key in keys:
        root, _, index = key.partition("#")
        where = f" in {root}" if len(roots) > 1 else ""
        if not index.isdigit():
            out.append({"key": key, "label": f"the people in {root}", "ref": root, "box": None})
            continue
        if root not in found:
            try:
                image = store.open(root)
                boxes = [tuple(int(v) for v in f.box) for f in analyzer.faces(image)]
                found[root] = (face_labels(boxes), boxes)
            except Exception:  # noqa: BLE001 - no analyser or no boxes: the number alone
                found[root] = None
        i = int(index)
        known = found[root]
        if known is not None and i < len(known[0]):
            out.append({"key": key, "label": known[0][i] + where, "ref": root, "box": known[1][i]})
        else:
            out.append({"key": key, "label": f"face {i + 1}{where}", "ref": root, "box": None})
    return out


def person_labels(store, keys: list[str], analyzer=None) -> list[str]:
    """How a person reads each key of `person_keys` (the labels of `person_faces`)."""
    return [face["label"] for face in person_faces(store, keys, analyzer)]


def consent_question(people: list[str], labels: list[str] | None = None) -> str:
    """The consent question; `labels` (from `person_labels`) name the people as a person reads
    them, else the keys are shown."""
    return reasons()["consent"]["question"].format(people=", ".join(labels or people))
