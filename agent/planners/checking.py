"""What is wrong with a planner's tool calls before anything runs.

The plan step (and the planner eval, which measures the plan step) reads a reply, checks its calls
here and, when something is wrong, gives the model one chance to fix it with the problems spelled
out (`prompts/turn.yaml`: `repair_call`). The checks are the contract and the session's state,
nothing about any particular request:

- the tool exists and its arguments validate (`tools.schemas.validate_call`);
- every image argument is an image of this chat (a made-up ref, or words where a ref belongs, with
  no image at all means the user has to upload one first);
- `revert` goes to an image other than the current one (reverting to it changes nothing);
- `edit_image` does not give its own image as a reference;
- before any tool ran this turn, a text reply does not say "Done" (nothing was done);
- read back against the user's words: a side of the subject ("to her left") or a turning sense
  ("clockwise") the message names is the side or sense the call's signed degrees turn to
  (`camera_azimuth` is positive to the subject's left, `rotate_deg` counter-clockwise): a small
  model writes these signs from its own habit rather than from the contract. A turning sense
  also says the picture itself turns (`rotate_deg`), which a camera orbit cannot do. A reframe
  to a new shape has the orientation the message names ("landscape instead of portrait"); warm
  or cool light or white balance is on that side of neutral. A revert
  goes to the version the message names by the tree ("the original", "before the relighting";
  `agent.prompting.version_targets`).
- `adjust_image` changes something (a small model likes `white_balance_k: 6500`, neutral, for
  "warmer") and (deterministic) does not repeat the adjustment that made the current image from
  its parent: that makes the same image again ("a bit less" answered with the same +1 EV). The
  version records carry the args; the dev eval's images do not, so this acts in real turns.

One thing is not sent back: a call that needs an image in a chat that has none. The model cannot
fix that (it tends to invent an `upload_image` tool); the turn asks the user to upload instead
(`ask_upload`; unless another call of the reply creates one).

A call that still has problems after the repair goes on to the turn's own validation, which
returns the error to the model as a tool message.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, NamedTuple

from agent.planners.base import PlannerReply, ToolCall
from agent.planners.parsing import format_tool_call
from agent.prompting import REPAIR_FLAG, get_field, say, version_targets
from tools.adjust import NO_CHANGE, changes_nothing
from tools.errors import ToolArgumentError
from tools.schemas import validate_call


def _image_args(args: dict[str, Any]) -> list[tuple[str, Any]]:
    out = [("image", args["image"])] if "image" in args else []
    refs = args.get("references")
    if isinstance(refs, list):
        out.extend(("references", r) for r in refs)
    return out


# the subject's own side ("her left", "the subject's right"); the viewer's "to the left" is not read
_SUBJECT_SIDE = re.compile(r"\b(?:her|his|their|its|the (?:subject|person|model)'?s)\s+(left|right)\b", re.I)
_TURN_SENSE = re.compile(r"\b(counter[- ]?clockwise|anti[- ]?clockwise|clockwise)\b", re.I)


_ORIENTATION_WORDS = {"landscape": "wide", "horizontal": "wide", "wide": "wide", "wider": "wide",
                      "portrait": "tall", "vertical": "tall", "tall": "tall", "taller": "tall"}
_ORIENTATION = re.compile(r"\b(" + "|".join(_ORIENTATION_WORDS) + r")\b", re.I)
_REPLACED = re.compile(r"\b(?:instead of|rather than|not|from)\s+(?:a |the )?(" + "|".join(_ORIENTATION_WORDS) + r")\b", re.I)
_NAMES_RATIO_OR_SQUARE = re.compile(r"\b\d+\s*[:x/]\s*\d+\b|\bsquare\b", re.I)


def _orientation(ratio: str) -> str | None:
    w, h = (float(x) for x in ratio.split(":"))
    return "wide" if w > h else "tall" if h > w else None


def _reframe_orientation(args: Any, message: str) -> list[str]:
    """A reframe to a new shape goes the way the message names ("make this landscape instead of
    portrait"): the word it replaces, an explicit ratio or "square" leave the check out."""
    ratio = getattr(args, "aspect_ratio", None)
    if not ratio or _NAMES_RATIO_OR_SQUARE.search(message):
        return []
    named = [_ORIENTATION_WORDS[w.lower()] for w in _ORIENTATION.findall(message)]
    for old in _REPLACED.findall(message):
        named.remove(_ORIENTATION_WORDS[old.lower()])
    if len(set(named)) != 1 or _orientation(ratio) in (None, named[0]):
        return []
    want = "landscape (wider than tall: 16:9, 3:2, 4:3)" if named[0] == "wide" else "portrait (taller than wide: 9:16, 2:3, 3:4)"
    shape = "taller than wide" if named[0] == "wide" else "wider than tall"
    return [f"reframe_image: aspect_ratio {ratio} is {shape}, but the user asked for {want}"]


# "cool" alone is slang as often as a colour ("make it look cool"): only "cool" + a colour word counts
_TEMPERATURE = re.compile(r"\b(less |too |not so |not )?(warm|warmer|warmth|cooler|cold|colder|"
                          r"cool(?=\s+(?:blue|white|light|tones?|colou?rs?|cast|daylight|moonlight|balance)\b))\b", re.I)


def _temperature(name: str, args: Any, message: str) -> list[str]:
    """A warm or cool light or white balance the message asks for is on that side of neutral
    (the contract: warm < 4000 K < neutral < 6500 K < cool light; a white balance below 6500 K
    is warmer). "Less warm", "too cold" and the like, or both named, leave the check out."""
    found = _TEMPERATURE.findall(message)
    if not found or any(modifier for modifier, _ in found):
        return []
    named = {"warm" if word.lower().startswith("warm") else "cool" for _, word in found}
    if len(named) != 1:
        return []
    want = named.pop()
    if name == "relight_image" and (kelvin := getattr(args, "color_temperature", None)):
        if (want == "warm" and kelvin >= 4000) or (want == "cool" and kelvin <= 6500):
            return [f"relight_image: color_temperature {kelvin} K is not {want} light "
                    "(warm < 4000 K < neutral < 6500 K < cool)"]
    if name == "adjust_image" and (kelvin := getattr(args, "white_balance_k", None)):
        if (want == "warm" and kelvin >= 6500) or (want == "cool" and kelvin <= 6500):
            return [f"adjust_image: white_balance_k {kelvin} is not {want}er (6500 is neutral, lower is warmer, "
                    "higher is cooler)"]
    return []


def _read_back(name: str, args: Any, message: str) -> list[str]:
    """Where the call's signed degrees, new shape or colour temperature contradict the side,
    turning sense, orientation or warmth the message names."""
    problems = _reframe_orientation(args, message) if name == "reframe_image" else []
    problems += _temperature(name, args, message)
    sides = {m.lower() for m in _SUBJECT_SIDE.findall(message)}
    azimuth = getattr(args, "camera_azimuth", None)
    if name == "reframe_image" and len(sides) == 1 and azimuth:
        said, goes = sides.pop(), ("left" if azimuth > 0 else "right")
        if said != goes:
            problems.append(f"reframe_image: camera_azimuth {azimuth:g} turns the camera to the subject's {goes}, "
                            f"but the user asked for the subject's {said} (positive = the subject's left, "
                            f"negative = the subject's right)")
    senses = {"counter-clockwise" if m.lower() != "clockwise" else "clockwise" for m in _TURN_SENSE.findall(message)}
    if name == "reframe_image" and senses and azimuth:
        problems.append(f"reframe_image cannot turn the picture {' or '.join(sorted(senses))} (camera_azimuth moves "
                        "the camera around the subject); to turn the picture itself call adjust_image with "
                        "rotate_deg (positive = counter-clockwise, negative = clockwise)")
    rotate = getattr(args, "rotate_deg", None)
    if name == "adjust_image" and len(senses) == 1 and rotate and abs(rotate) != 180:
        said, goes = senses.pop(), ("counter-clockwise" if rotate > 0 else "clockwise")
        if said != goes:
            problems.append(f"adjust_image: rotate_deg {rotate:g} turns the picture {goes}, but the user asked "
                            f"for {said} (positive = counter-clockwise, negative = clockwise)")
    return problems


# the versions a message can name by the version tree: "the original", "before the relighting"
_NAMES_ORIGINAL = re.compile(r"\b(?:the |my )?original\b", re.I)
_STEP_WORDS = {  # each noun of agent.prompting.STEP_NOUNS -> how a message names that step
    "relighting": r"relight\w*|relit|(?:the )?light(?:ing)?",
    "reframing": r"refram\w*|zoom\w*|(?:the )?crop\w*",
    "adjustment": r"adjust\w*|brighten\w*|darken\w*",
    "edit": r"edit\w*",
}
_NAMES_BEFORE = {noun: re.compile(rf"\bbefore (?:the |i |you |my )?(?:{words})\b", re.I) for noun, words in _STEP_WORDS.items()}


def _revert_read_back(target: Any, message: str, images: list[Any], current: str | None) -> list[str]:
    """A revert whose target is not the version the message names by the tree."""
    if not images:
        return []
    tree = version_targets(images, current)
    if not tree:
        return []
    named = [(f"the version before the {noun}", tree["before"][noun]) for noun, pattern in _NAMES_BEFORE.items()
             if noun in tree["before"] and pattern.search(message)]
    if not named and _NAMES_ORIGINAL.search(message):
        named = [("the original", tree["original"])]
    if len(named) != 1 or named[0][1] == target:
        return []
    what, ref = named[0]
    return [f"revert: the user asked for {what}, which is {ref}, not {target}"]


def _changes_nothing(name: str, valid: Any) -> list[str]:
    """An `adjust_image` whose every setting is unset or at its identity (6500 K is neutral white
    balance, not "warmer") leaves the image as it is."""
    if name != "adjust_image" or not changes_nothing(**valid.model_dump()):
        return []
    return [f"adjust_image: {NO_CHANGE}; give the values that make the change the user asked for, or reply in "
            "plain text if the request is not an exact photo setting"]


def _recreates(name: str, valid: Any, images: list[Any], current: str | None) -> list[str]:
    """`adjust_image` is deterministic: the same adjustment of the current image's parent makes the
    current image again, pixel for pixel (a generative tool would draw a new sample: a retry)."""
    if name != "adjust_image" or not current:
        return []
    made = next((im for im in images if get_field(im, "ref") == current), None)
    call = get_field(made, "tool_call") or {}
    if call.get("name") != name or get_field(made, "parent") != valid.image:
        return []
    try:
        before = validate_call(name, call.get("args") or {})
    except ToolArgumentError:
        return []
    if before.model_dump(exclude_none=True) != valid.model_dump(exclude_none=True):
        return []
    return [f"adjust_image: this is the same adjustment that made {current} from {valid.image}, so it changes "
            "nothing; if the user wants more or less of it, change the values"]


def needs_upload(reply: PlannerReply, known: Iterable[str]) -> bool:
    """Every call of the reply works on an image and the chat has none (no call creates one):
    only the user can fix that."""
    if list(known) or not reply.tool_calls:
        return False
    return all(_image_args(c.args if isinstance(c.args, dict) else {}) for c in reply.tool_calls)


def _problems_of(call: ToolCall, known: list[str], current: str | None, message: str = "",
                 images: list[Any] | None = None) -> list[str]:
    args = call.args if isinstance(call.args, dict) else {}
    unknown = [(where, ref) for where, ref in _image_args(args) if ref not in known]
    problems = []
    for where, ref in unknown:  # before validation: "not an image of this chat" reads better than a regex
        if not known:
            problems.append(f"{call.name}: {where} {ref!r}: there are no images in this chat yet; "
                            "ask the user to upload the photo first")
        else:
            problems.append(f"{call.name}: {where} {ref!r} is not an image of this chat; "
                            f"use one of {', '.join(known)}")
    if unknown:
        return problems
    try:
        valid = validate_call(call.name, call.args)
    except ToolArgumentError as err:
        return [str(err)]
    problems.extend(_read_back(call.name, valid, message))
    if call.name == "revert" and not problems:
        problems.extend(_revert_read_back(args.get("image"), message, images or [], current))
    problems.extend(_changes_nothing(call.name, valid) or _recreates(call.name, valid, images or [], current))
    if call.name == "revert" and current and args.get("image") == current:
        problems.append(f"revert: {current} is already the current image; give the earlier version to go back to")
    if call.name == "edit_image" and args.get("image") in (args.get("references") or []):
        problems.append("edit_image: references must be other images than image itself")
    return problems


def call_problems(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None,
                  message: str = "", images: Iterable[Any] = ()) -> list[list[str]]:
    """The problems of each of the reply's tool calls, in order (an empty list: that call can run).
    `message` is the user's request and `images` the chat's versions (refs, parents, origins),
    for the read-backs."""
    known = list(dict.fromkeys(refs))
    images = list(images)
    return [_problems_of(call, known, current, message, images) for call in reply.tool_calls]


# a reply that reports a change as made ("Done", "Done: img_x") although no tool ran this turn
_CLAIMS_DONE = re.compile(r"^\s*done\b", re.IGNORECASE)


def review(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None,
           deciding: bool = False, message: str = "", images: Iterable[Any] = ()) -> tuple[str, str] | None:
    """Whether a reply goes back to the model: `("repair", problem)` when no call could be read,
    `("repair_call", problems)` when its first call has problems, None when it can go on. The
    kinds name the texts of `prompts/turn.yaml` that ask for the repair. While `deciding` (no
    tool has run yet this turn), a text that says "Done" without any call is sent back too
    (`"repair_done"`): nothing changes without a tool call. `("ask_upload", ...)`: the calls
    need an image and the chat has none (none of them creates one); the turn answers with that text instead of asking the
    model again.

    Later calls with problems do not send a good first call back: they are dropped from the reply
    (a small model likes to add calls on images that do not exist yet, e.g. the one its first
    call will make; the model plans again after the first result anyway)."""
    if reply.malformed and not reply.tool_calls:
        return "repair", "; ".join(m[:300] for m in reply.malformed)
    if deciding and not reply.tool_calls and _CLAIMS_DONE.match(reply.text or ""):
        return "repair_done", (reply.text or "").strip()[:200]
    known = list(dict.fromkeys(refs))
    if needs_upload(reply, known):
        return "ask_upload", f"{reply.tool_calls[0].name} needs an image and the chat has none"
    per_call = call_problems(reply, refs=known, current=current, message=message, images=images)
    if per_call and per_call[0]:
        return "repair_call", "; ".join(p for problems in per_call for p in problems)
    reply.tool_calls = [call for call, problems in zip(reply.tool_calls, per_call) if not problems]
    return None


def repair_messages(reply: PlannerReply, request: str) -> list[dict[str, Any]]:
    """The exchange that asks for a repair: the model's reply as it was, then the request."""
    said = reply.raw or "\n".join([reply.text, *(format_tool_call(c.name, c.args) for c in reply.tool_calls)]).strip()
    return [{"role": "assistant", "content": said, REPAIR_FLAG: True},
            {"role": "user", "content": request, REPAIR_FLAG: True}]


class Verdict(NamedTuple):
    """What the plan step does with a reply that cannot go on as it is: send `exchange` (the
    messages to append) back to the model, or, when `answer` is set, end the turn with it."""

    kind: str
    problem: str
    exchange: list[dict[str, Any]]
    answer: str | None = None


def repair_request(reply: PlannerReply, *, refs: Iterable[str], current: str | None = None,
                   deciding: bool = False, message: str = "", images: Iterable[Any] = ()) -> Verdict | None:
    """What the plan step does with `reply` (see `review`); None when it can go on."""
    verdict = review(reply, refs=refs, current=current, deciding=deciding, message=message, images=images)
    if verdict is None:
        return None
    kind, problem = verdict
    if kind == "ask_upload":
        return Verdict(kind, problem, [], say(kind))
    return Verdict(kind, problem, repair_messages(reply, say(kind, problem=problem)))
