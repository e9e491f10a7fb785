"""What the chat shows, as plain functions over the agent's data (no Chainlit here).

Kept apart from the Chainlit callbacks so that every text a person reads can be tested without a
server: the banner, a tool step's input and output (arguments, result, the checks it passed),
progress lines, upload problems, and the chat-settings -> profile-overrides mapping.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from agent.turn import Refusal, TurnError
    from tools.schemas import ToolResult

ACCEPTED_MIME = ("image/png", "image/jpeg", "image/webp")


def texts() -> dict[str, str]:
    """The chat app's user-facing texts (`ui/chat_app/texts.yaml`)."""
    raw = (resources.files("ui.chat_app") / "texts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(raw)


def banner(profile) -> str:
    """The first message of a chat: which profile runs, and the random-weights notice."""
    t = texts()
    lines = [t["banner"].format(name=profile.name, description=profile.description or "").strip()]
    if profile.random_weights_notice:
        lines.append(t["random_weights_notice"].strip())
    lines.append(t["howto"].strip())
    return "\n\n".join(lines)


def tool_input(args: dict[str, Any]) -> str:
    """A tool call's arguments as indented JSON (shown as the step's input)."""
    return json.dumps(args or {}, indent=2, ensure_ascii=False, sort_keys=False)


def _as_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if hasattr(result, "model_dump"):
        return result.model_dump()
    if isinstance(result, dict):
        return result
    return {"note": str(result)}


# the drift figures worth a line (tools.drift.measure): key, label, unit
DRIFT_FIGURES = (("global_shift_px", "global shift", " px"), ("outside_change", "change outside the edit", ""),
                 ("mean_change", "mean change", ""))


def result_checks(result: ToolResult) -> list[str]:
    """The checks a result passed, one short line each: identity per face, watermark, safety."""
    lines: list[str] = []
    faces = result.faces
    boxes = [face.box for face in faces]
    if faces and all(boxes):  # named as the note names them: 1-based, left to right, with where
        from tools.identity import describe_faces

        names = [f"face {f.face + 1} ({where})" for f, where in zip(faces, describe_faces([tuple(b) for b in boxes]))]
    else:
        names = [f"face {f.face + 1}" for f in faces]
    for face, name in zip(faces, names):
        if face.distance is None:
            lines.append(f"{name}: lost (no matching face in the result)")
        else:
            verdict = "same person" if face.same_person else "DRIFTED"
            lines.append(f"{name}: identity distance {face.distance:.3f} ({verdict})")
    if result.attempts > 1:
        lines.append(f"attempts: {result.attempts}")
    for wid in result.watermark_ids:
        lines.append(f"watermark id: {wid}")
    if result.images and result.ok and result.tool != "revert":
        # the turn only shows a result that passed the request, call and result screens
        lines.append("safety: allowed (request, tool call and result screened)")
    drift = result.drift
    drift_parts = [f"{label} {drift[key]:.3g}{unit}" for key, label, unit in DRIFT_FIGURES
                   if isinstance(drift.get(key), (int, float))]
    if drift_parts:
        lines.append("drift: " + ", ".join(drift_parts))
    return lines


def tool_output(result: ToolResult | None, denoising_steps: int | None = None) -> str:
    """A finished tool step's output (a `ToolEndEvent`'s or `CallRecord`'s result): the refs it
    made, size, seeds, the denoising steps it ran (from its progress events), then the checks."""
    if result is None:
        return "done"
    if not result.ok or result.error:
        return f"**Failed:** {result.error or 'the tool did not finish'}"
    facts: list[str] = []
    if result.images:
        facts.append("**Result:** " + ", ".join(f"`{ref}`" for ref in result.images))
    if result.current and result.current not in result.images:
        facts.append(f"**Current:** `{result.current}`")
    if result.size:
        w, h = result.size
        facts.append(f"**Size:** {w}x{h}")
    if result.seeds:
        facts.append("**Seed:** " + ", ".join(str(s) for s in result.seeds))
    if denoising_steps:
        facts.append(f"**Steps:** {denoising_steps}")
    parts = [" · ".join(facts)] if facts else []
    checks = result_checks(result)
    if checks:
        parts.append("**Checks:**\n" + "\n".join(f"- {line}" for line in checks))
    if result.note:
        parts.append(f"**Note:** {result.note}")
    return "\n\n".join(parts) or "done"


def closing_text(answer: str, refusal: Refusal | None, error: TurnError | None, has_images: bool) -> str:
    """The text of a turn's closing message: the agent's answer, else the refusal explained in a
    sentence; a failure (engine out of memory, bad reference...) as one readable line; a stopped
    turn as such. Never a stack trace: only `message` fields reach the chat."""
    t = texts()
    if error is not None and error.code == "cancelled":
        return t["stopped"]
    lines = [answer] if answer else []
    if refusal is not None and not answer:
        reason = refusal.reason or "that request is against the safety policy"
        lines.append(t["refused"].format(reason=reason))
    if error is not None and error.code == "consent_declined":
        lines = [t["consent_declined"]]  # the user's own choice, not a failure
    elif error is not None:
        message = (error.message or "unknown error").strip().splitlines()[0]
        if message not in (answer or ""):  # the answer already says it
            lines.append(t["error"].format(message=message))
    if not lines:
        lines.append("Here it is." if has_images else "Done.")
    return "\n\n".join(lines)


def progress_line(step: int, total: int) -> str:
    total = max(int(total), 1)
    step = min(max(int(step), 0), total)
    filled = round(10 * step / total)
    return f"denoising step {step} of {total}  [{'#' * filled}{'.' * (10 - filled)}]"


def upload_problem(name: str, mime: str | None, size: int | None, max_bytes: int) -> str | None:
    """Why an attached file cannot be used (None when it can): checked before the agent runs."""
    t = texts()
    if (mime or "").lower() not in ACCEPTED_MIME:
        return t["upload_unsupported"].format(name=name, mime=mime or "unknown type")
    if size is not None and size > max_bytes:
        return t["upload_too_large"].format(name=name, size_mb=size / 1e6, max_mb=max_bytes / 1e6)
    return None


# Chat settings (cl.ChatSettings widget ids) -> profile overrides
SETTING_STEPS = "steps"
SETTING_SEED = "seed"
SETTING_IDENTITY = "identity_max_distance"


def settings_overrides(values: dict[str, Any], profile) -> dict[str, Any]:
    """Turn the chat-settings panel into profile overrides; values equal to the profile's own
    are left out, so an untouched panel means no overrides."""
    out: dict[str, Any] = {}
    steps = values.get(SETTING_STEPS)
    if steps not in (None, "") and int(steps) != profile.engine.steps:
        out.setdefault("engine", {})["steps"] = max(1, int(steps))
    seed = values.get(SETTING_SEED)  # 0: a new random seed for every picture (the profile's default)
    if seed not in (None, "") and int(float(seed)) != (profile.engine.seed or 0):
        out.setdefault("engine", {})["seed"] = max(0, int(float(seed))) or None
    distance = values.get(SETTING_IDENTITY)
    if distance not in (None, "") and abs(float(distance) - profile.identity.max_distance) > 1e-9:
        out.setdefault("identity", {})["max_distance"] = float(distance)
    return out


def merge_overrides(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (base or {}).items()}
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# -- pictures with their words: version thumbnails and face crops --------------------------------
THUMB_SIDE = 160  # px: a version's thumbnail (the image fitted into a square)
FACE_SIDE = 128  # px: a face crop in a consent question
LABEL_BAND = 22  # px: the band under a picture that says what it is


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: one bitmap size
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _tile(image, label: str, side: int, lines: int):
    """`image` (PIL) fitted into a `side` px square with `label` written on a band of `lines`
    lines under it (a PIL image)."""
    from PIL import Image, ImageDraw

    picture = image.convert("RGB")
    picture.thumbnail((side, side), Image.LANCZOS)
    if max(picture.size) < side:  # tiny images (tiny profile: 64 px) are enlarged, pixels kept sharp
        f = side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * f)), max(1, round(picture.height * f))), Image.NEAREST)
    canvas = Image.new("RGB", (side, side + LABEL_BAND * lines), (246, 246, 246))
    canvas.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    words, rows = label.split(), []
    for _ in range(lines):  # greedy wrap; the last row is cut with an ellipsis
        row = ""
        while words and draw.textlength((row + " " + words[0]).strip(), font=font) <= side - 8:
            row = (row + " " + words.pop(0)).strip()
        if not row and words:
            row = words.pop(0)
        rows.append(row)
    if words:
        rows[-1] = _fit_text(draw, rows[-1] + " " + " ".join(words), font, side - 8)
    for i, row in enumerate(rows):
        draw.text((4, side + 4 + i * LABEL_BAND), row, fill=(30, 30, 30), font=font)
    return canvas


def contact_sheet(tiles: list[tuple[Any, str]], side: int, *, lines: int = 2, columns: int = 4) -> bytes:
    """Labelled pictures in one image (PNG bytes), left to right then row by row: the order and
    the words are part of the picture, wherever and however it is shown (a reopened chat too)."""
    import io

    from PIL import Image

    made = [_tile(image, label, side, lines) for image, label in tiles]
    gap = 6
    cols = max(1, min(columns, len(made)))
    rows = (len(made) + cols - 1) // cols
    width, height = cols * side + (cols - 1) * gap, rows * made[0].height + (rows - 1) * gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    for k, tile in enumerate(made):
        sheet.paste(tile, ((k % cols) * (side + gap), (k // cols) * (tile.height + gap)))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def versions_sheet(items: list[tuple[str, str]]) -> bytes:
    """Every version's thumbnail, labelled with its number and the step that made it
    ((path, label) pairs, oldest first)."""
    from PIL import Image

    tiles = []
    for path, label in items:
        with Image.open(path) as image:
            image.load()
            tiles.append((image.copy(), label))
    return contact_sheet(tiles, THUMB_SIDE, lines=2, columns=4)


def faces_sheet(items: list[tuple[str, tuple[int, int, int, int], str]], margin: float = 0.35, *,
                lines: int = 3) -> bytes:
    """The faces of a consent question ((path, box, label) each, in their numbered order), each
    cropped with a margin around its box and labelled as every note names the person."""
    from PIL import Image

    tiles = []
    for path, box, label in items:
        with Image.open(path) as image:
            left, top, right, bottom = box
            pad_x, pad_y = (right - left) * margin, (bottom - top) * margin
            area = (max(0, int(left - pad_x)), max(0, int(top - pad_y)),
                    min(image.width, int(right + pad_x)), min(image.height, int(bottom + pad_y)))
            tiles.append((image.crop(area), label))
    return contact_sheet(tiles, FACE_SIDE, lines=lines, columns=6)


def versions_text(entries: list[Any]) -> str:
    """The Versions list as text: one line per version (its number, what made it, where from),
    the current one marked; the thumbnails carry the same numbers."""
    t = texts()
    lines = [t["versions_title"]]
    for entry in entries:
        line = f"- **#{entry.number}** {entry.made}"
        if entry.parent_number:
            line += f" — from #{entry.parent_number}"
        if entry.current:
            line += " " + t["versions_current"]
        lines.append(line)
    return "\n".join(lines)


def consent_people_text(labels: list[str]) -> str:
    """The line over the face crops of a consent question."""
    return texts()["consent_people"].format(people="; ".join(labels))


# -- the buttons of a reopened chat --------------------------------------------------------------
RESULT_KEY = "atelier"  # a result message's metadata: {"ref": the image its buttons act on, "followups": [...]}


def stored_results(thread: dict[str, Any]) -> list[tuple[str, str | None, list[Any], list[tuple[str, int | None]]]]:
    """(message id, image ref, followups, (ref, number) of each image) of every result message of
    a stored thread, from the metadata `send_result` kept (Chainlit stores messages and images,
    not their buttons); a result saved before that metadata existed is known by its image, named
    by its ref."""
    from pathlib import Path

    from agent.turn import Followup
    from tools.schemas import is_ref

    images: dict[str, str] = {}  # message id -> the ref of its last image
    for element in thread.get("elements") or []:
        name, for_id = str(element.get("name") or ""), element.get("forId")
        if for_id and element.get("type") == "image" and is_ref(Path(name).stem):
            images[str(for_id)] = Path(name).stem
    out = []
    for step in thread.get("steps") or []:
        meta = step.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError:
                meta = {}
        kept = meta.get(RESULT_KEY) if isinstance(meta, dict) else None
        if not step.get("id"):
            continue
        if not isinstance(kept, dict):
            if step.get("type") == "assistant_message" and str(step["id"]) in images:
                out.append((str(step["id"]), images[str(step["id"])], [], []))
            continue
        followups = []
        for item in kept.get("followups") or []:
            try:
                followups.append(Followup.model_validate(item))
            except ValueError:
                continue
        variations = [(str(item["ref"]), item.get("number")) for item in kept.get("images") or []
                      if isinstance(item, dict) and is_ref(str(item.get("ref") or ""))]
        out.append((str(step["id"]), kept.get("ref"), followups, variations))
    return out
