"""Screening of a tool call the planner wrote: every string argument, and consent for edits that
change how a real person in an uploaded photo looks (once per person per session)."""

from __future__ import annotations

from tools.safety.screener import Decision, PromptScreener, reasons
from tools.schemas import ToolArgs

# Arguments that are free text the planner wrote (the rest are enums, numbers and refs).
TEXT_FIELDS = ("prompt", "instruction", "region", "description")
NEGATIVE_FIELDS = ("negative_prompt",)  # lists what to avoid: only jailbreaks count there


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
) -> Decision:
    """Refuse when any planner-written string is refused; ask for consent before a face-changing
    edit of an uploaded photo of a person not yet in `consented`; otherwise allow."""
    for field, text in _strings(args, TEXT_FIELDS):
        decision = screener.screen(text)
        if decision.decision == "refuse":
            return decision.model_copy(update={"matched": f"{field}: {decision.matched}"})
    for field, text in _strings(args, NEGATIVE_FIELDS):
        decision = screener.screen(text)
        if decision.decision == "refuse" and decision.category == "jailbreak":
            return decision.model_copy(update={"matched": f"{field}: {decision.matched}"})
    if name != "edit_image":
        return Decision()
    wording = " ".join(t for _, t in _strings(args, ("instruction", "region")))
    changes_identity = (not args.preserve_identity) or screener.needs_identity_consent(wording)
    refs = [args.image, *args.references]
    people: list[str] = []
    for ref in refs:
        people += person_keys(store, ref, analyzer)
    brings_people_together = bool(args.references) and bool(people)
    if not people or not (changes_identity or brings_people_together):
        return Decision()
    missing = [p for p in dict.fromkeys(people) if p not in set(consented)]
    if not missing:
        return Decision(reason="consent already given for everyone in the photo")
    return Decision(decision="consent", category="consent", reason=reasons()["consent"]["reason"], matched=missing)


def person_labels(store, keys: list[str], analyzer=None) -> list[str]:
    """How a person reads each key of `person_keys`: "face 1 (the person on the left)", numbered
    from 1 left to right as in every note and check; " in <upload ref>" added when the keys come
    from more than one photo, "the people in <upload ref>" for a whole-photo key."""
    from tools.identity import face_labels

    roots = list(dict.fromkeys(key.split("#", 1)[0] for key in keys))
    labels_of: dict[str, list[str] | None] = {}
    out = []
    for key in keys:
        root, _, index = key.partition("#")
        where = f" in {root}" if len(roots) > 1 else ""
        if not index.isdigit():
            out.append(f"the people in {root}")
            continue
        if root not in labels_of:
            try:
                image = store.open(root)
                boxes = [tuple(f.box) for f in analyzer.faces(image)]
                labels_of[root] = face_labels(boxes, image.width)
            except Exception:  # noqa: BLE001 - no analyser or no boxes: the number alone
                labels_of[root] = None
        labels = labels_of[root]
        i = int(index)
        out.append((labels[i] if labels is not None and i < len(labels) else f"face {i + 1}") + where)
    return out


def consent_question(people: list[str], labels: list[str] | None = None) -> str:
    """The consent question; `labels` (from `person_labels`) name the people as a person reads
    them, else the keys are shown."""
    return reasons()["consent"]["question"].format(people=", ".join(labels or people))
