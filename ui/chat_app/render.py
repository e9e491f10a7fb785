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
    seed = values.get(SETTING_SEED)
    if seed not in (None, "") and int(float(seed)) != profile.engine.seed_base:
        out.setdefault("engine", {})["seed_base"] = max(0, int(float(seed)))
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


def versions_summary(versions: list[Any], current: str | None) -> list[dict[str, Any]]:
    """The session's versions as timeline rows: ref, parent, what made it, whether current."""
    rows = []
    for v in versions:
        v = _as_dict(v)
        call = v.get("tool_call") or {}
        made_by = call.get("name") or v.get("origin") or "?"
        rows.append({
            "ref": v.get("ref"),
            "parent": v.get("parent"),
            "made_by": made_by,
            "label": f"{v.get('ref')} — {made_by}" + (f" from {v['parent']}" if v.get("parent") else ""),
            "current": v.get("ref") == current,
        })
    return rows
