"""The turn's answer, composed from its tool results with the templates of `prompts/answers.yaml`.

A turn whose calls all succeeded needs no second model call: what was made or changed is said
in the user's terms (the light, the framing, the settings), the faces that were checked (kept,
with the largest distance, or not kept, said plainly with what to do), what drift control
corrected, and the version the result is in the chat ("#3", the number every list shows).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import yaml

from agent.resolver import Facts, Version
from agent.turn import CallRecord, Followup
from tools.schemas import STEP_WORDS, ToolResult


@lru_cache(maxsize=None)
def templates() -> dict[str, Any]:
    return yaml.safe_load((resources.files("prompts") / "answers.yaml").read_text(encoding="utf-8"))


def _t(key: str, **values: Any) -> str:
    node: Any = templates()
    for part in key.split("."):  # "line.face_kept": a template in a group
        node = node[part]
    return node.format(**values).strip()


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text or "").split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _numbers(refs: Iterable[str], facts: Facts) -> str:
    labels = [facts.label(r) for r in refs]
    return ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else (labels[0] if labels else "")


def _light(args: dict[str, Any]) -> str:
    words = []
    kelvin = args.get("color_temperature")
    if kelvin:
        warmth = "warm" if kelvin < 4000 else "cool" if kelvin > 6500 else "neutral"
        words.append(f"{_t(warmth)} ({kelvin} K)")
    if args.get("softness"):
        words.append(args["softness"])
    head = args.get("description") or (" ".join(words) + " light" if words else _t("light_default"))
    if args.get("description") and words:
        head += f" ({', '.join(words)})"
    if args.get("direction"):
        head += " " + _t("from_direction", direction=args["direction"].replace("-", " "))
    intensity = args.get("intensity")
    if intensity and abs(intensity - 1) > 0.01:
        head += f", {_t('stronger') if intensity > 1 else _t('weaker')} (x{intensity:g})"
    return head


def _framing(args: dict[str, Any]) -> str:
    parts = []
    if args.get("aspect_ratio"):
        parts.append(_t("ratio", ratio=args["aspect_ratio"]))
    zoom = args.get("zoom")
    if zoom and zoom != 1:
        parts.append(f"{_t('zoom_in') if zoom > 1 else _t('zoom_out')} (x{zoom:g})")
    azimuth = args.get("camera_azimuth")
    if azimuth:
        parts.append(_t("orbit", degrees=abs(azimuth), side="left" if azimuth > 0 else "right"))
    elevation = args.get("camera_elevation")
    if elevation:
        parts.append(f"{_t('from_above') if elevation > 0 else _t('from_below')} ({abs(elevation):g}°)")
    if args.get("shot"):
        parts.append(_t("shot", shot=args["shot"]))
    return ", ".join(parts) or _t("framing_default")


def _settings(args: dict[str, Any]) -> str:
    parts = []
    ev = args.get("exposure_ev")
    if ev:
        parts.append(_t("exposure", ev=ev, s="" if abs(ev) == 1 else "s"))
    kelvin = args.get("white_balance_k")
    if kelvin:
        parts.append(_t("white_balance", kelvin=kelvin, warmth="warmer" if kelvin < 6500 else "cooler" if kelvin > 6500 else "neutral"))
    for key in ("contrast", "saturation"):
        if args.get(key) is not None and args[key] != 1:
            parts.append(_t(key, value=args[key]))
    rotate = args.get("rotate_deg")
    if rotate:
        parts.append(_t("rotated", degrees=abs(rotate), sense="counter-clockwise" if rotate > 0 else "clockwise"))
    if args.get("crop"):
        parts.append(_t("cropped"))
    return ", ".join(parts) or _t("nothing")


def _faces(result: ToolResult, source: str, *, meant_to_change: bool = False) -> str:
    faces = result.faces
    if not faces:
        return ""
    if meant_to_change:  # an identity change the user asked (and consented) for: measured, not a problem
        worst = max((f.distance for f in faces if f.distance is not None), default=0.0)
        return _t("faces_changed", n=len(faces), worst=worst)
    if all(f.same_person for f in faces):
        worst = max(f.distance or 0.0 for f in faces)
        return _t("faces_kept_one", worst=worst) if len(faces) == 1 else _t("faces_kept", n=len(faces), worst=worst)
    from tools.identity import describe_checks

    problem = describe_checks(faces) or "a face changed"
    return _t("faces_problem", problem=problem, source=source)


def _corrections(result: ToolResult) -> str:
    """What drift control corrected, from the result's note (the parts that are not the faces)."""
    if not result.note:
        return ""
    from tools.identity import describe_checks

    faces_note = describe_checks(result.faces) if result.faces else None
    parts = [p.strip() for p in result.note.split(";") if p.strip()]
    # the faces are said by `_faces` (a note's "... after 2 attempts" included)
    kept = [p for p in parts if not (faces_note and (p in faces_note or p.startswith(faces_note)))
            and not p.startswith("after ")]
    said = [p for p in kept if p.startswith(("re-aligned", "kept the untouched"))]
    other = [p for p in kept if p not in said]
    out = []
    if said:
        out.append(_t("corrected", what=" and ".join(said)))
    out.extend(p[0].upper() + p[1:] + ("" if p.endswith(".") else ".") for p in other)
    return " ".join(out)


def describe_call(record: CallRecord, facts: Facts) -> str:
    """One finished call in plain words (its faces, corrections and notes included)."""
    result, args = record.result, record.args
    tool = STEP_WORDS.get(record.name, record.name)
    if not result.ok:
        error = (result.error or "").rstrip(".")
        if record.code == "refused":
            return _t("refused_call", reason=error)
        if record.code == "consent_declined":
            return _t("declined", reason=error)
        if record.code == "cancelled":
            return ""
        return _t("failed", tool=record.name.replace("_", " ").capitalize(), error=error)
    made = _numbers(result.images, facts) or facts.label(result.current or "")
    source = facts.label(args.get("image", "")) if args.get("image") else ""
    size = f"{result.size[0]}x{result.size[1]}" if result.size else ""
    name = record.name
    if name == "generate_image":
        n = len(result.images)
        key = templates()["generate_image"]["many" if n > 1 else "one"]
        text = key.format(prompt=_short(args.get("prompt", ""), 70), size=size, made=made, count=n).strip()
    elif name == "edit_image" and args.get("references"):
        text = _t("edit_with_references", references=_numbers(args["references"], facts), source=source,
                  instruction=_short(args.get("instruction", "")), made=made)
    elif name == "edit_image":
        text = _t("edit_image", source=source, instruction=_short(args.get("instruction", "")), made=made)
    elif name == "relight_image":
        text = _t("relight_image", source=source, light=_light(args), made=made)
    elif name == "reframe_image":
        text = _t("reframe_image", source=source, framing=_framing(args), made=made)
    elif name == "adjust_image":
        text = _t("adjust_image", source=source, settings=_settings(args), made=made)
    elif name == "revert":
        target = facts.get(result.current or args.get("image"))
        how = ""
        if target is not None:
            how = f" (the {STEP_WORDS.get(target.tool or 'upload', 'uploaded')} one)" if target.tool else " (the uploaded photo)"
        text = _t("revert", made=facts.label(result.current or args.get("image", "")), how=how)
    else:
        text = f"{tool.capitalize()}: {made}."
    extras = [_faces(result, source, meant_to_change=args.get("preserve_identity") is False), _corrections(result)]
    return " ".join(p for p in [text, *extras] if p)


def compose(records: list[CallRecord], facts: Facts, *, withheld: int = 0, stopped: bool = False) -> str:
    """The answer of a turn from its finished calls."""
    parts = [describe_call(r, facts) for r in records]
    if withheld:
        parts.append(_t("withheld", n=withheld))
    if stopped:
        parts.append(_t("stopped"))
    return " ".join(p for p in parts if p) or _t("nothing")


# -- a version in a few words, and the line under an image ---------------------------------------


def version_words(version: Version, facts: Facts) -> str:
    """What made a version, in a few words: "relit: warm (3200 K) light from the left", "uploaded
    photo", "generated: a lighthouse at dusk" (the Versions list; the line under an image)."""
    tool, args = version.tool, version.args
    if tool is None:
        return _t("version.upload")
    if tool == "generate_image":
        what = _short(args.get("prompt", ""), 50)
    elif tool == "edit_image":
        what = _short(args.get("instruction", ""), 50)
        if args.get("references"):
            return _t("version.edit_with_references", references=_numbers(args["references"], facts), what=what)
    elif tool == "relight_image":
        what = _light(args)
    elif tool == "reframe_image":
        what = _framing(args)
    elif tool == "adjust_image":
        what = _settings(args)
    elif tool == "revert":
        what = facts.label(args.get("image", ""))
    else:
        return STEP_WORDS.get(tool, tool)
    return _t(f"version.{tool}", what=what)


def _face_names(result: ToolResult) -> list[str]:
    """"face 1 (the person on the left)", as every note and check names the faces."""
    boxes = [f.box for f in result.faces]
    if result.faces and all(boxes):
        from tools.identity import face_labels

        return face_labels([tuple(b) for b in boxes])
    return [f"face {f.face + 1}" for f in result.faces]


def face_notes(record: CallRecord) -> list[str]:
    """Each face the call checked, as the line under its result says it: "face 1 (the person on
    the left) kept (distance 0.21)", "... LOST" (in the order of `record.result.faces`)."""
    result, changed = record.result, record.args.get("preserve_identity") is False
    notes = []
    for face, name in zip(result.faces, _face_names(result)):
        if face.distance is None:
            notes.append(_t("line.face_lost", face=name))
        elif changed:
            notes.append(_t("line.face_changed", face=name, distance=face.distance))
        elif face.same_person:
            notes.append(_t("line.face_kept", face=name, distance=face.distance))
        else:
            notes.append(_t("line.face_drifted", face=name, distance=face.distance))
    return notes


def result_line(record: CallRecord, facts: Facts, ref: str) -> str:
    """The compact line under an image, always visible: its number and size, what changed, each
    person kept (with the distance) or not, the drift corrected, the watermark id."""
    result, args = record.result, record.args
    version = facts.get(ref) or Version(ref=ref, parent=args.get("image"), tool=record.name, args=args)
    if version.tool is None:  # the store's record of it has no call (older versions): the call's own
        version = Version(ref=ref, parent=args.get("image"), tool=record.name, args=args)
    source = args.get("image")
    parts = [facts.label(ref) + (f" ({_t('version.from', parent=facts.label(source))})"
                                 if source and record.name != "revert" else "")]
    if result.size:
        parts.append(f"{result.size[0]}×{result.size[1]}")
    parts.append(version_words(version, facts))
    parts.extend(face_notes(record))
    drift = result.drift
    if drift:
        corrected = []
        if drift.get("realigned"):
            corrected.append(_t("line.realigned", shift=drift.get("global_shift_px", 0.0)))
        if drift.get("pasted_back", 0) > 0:
            corrected.append(_t("line.pasted_back", percent=100 * drift["pasted_back"]))
        parts.append(_t("line.drift_corrected", what=", ".join(corrected)) if corrected else _t("line.no_drift"))
    if ref in result.images and len(result.watermark_ids) == len(result.images):
        parts.append(_t("line.watermark", id=result.watermark_ids[result.images.index(ref)]))
    return " · ".join(p for p in parts if p)


def followups(records: list[CallRecord], facts: Facts) -> list[Followup]:
    """Buttons under a result whose face check failed (a face lost, or another person now): the
    same call again (a new seed each time) and back to the image it started from."""
    for record in reversed(records):
        result = record.result
        if not result.ok or not result.faces or record.args.get("preserve_identity") is False:
            continue
        if all(f.same_person for f in result.faces):
            return []
        source = record.args.get("image")
        out = [Followup(kind="retry", label=_t("followup_retry"), call={"name": record.name, "args": record.args})]
        if source:
            out.append(Followup(kind="back", label=_t("followup_back", source=facts.label(source)), ref=source))
        return out
    return []
