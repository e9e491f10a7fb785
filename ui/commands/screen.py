"""`atelier screen`: screen texts (one, or a JSONL batch) and manage the public-figure face gallery.

    atelier screen "a text"                       one decision
    atelier screen --jsonl FILE                   one JSON line per input: {"id","decision","category","reason"}
    atelier screen --image FILE                   NSFW and public-figure check of an image
    atelier screen --add-figure NAME PHOTO...     add a public figure to the face gallery
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("screen", help="screen texts or images with the safety policy; manage the face gallery")
    p.add_argument("text", nargs="?", help="a text to screen")
    p.add_argument("--jsonl", metavar="FILE", help='batch: lines with "id" and "text" ("-" for stdin)')
    p.add_argument("--image", metavar="FILE", help="screen an image (NSFW, public-figure gallery)")
    p.add_argument("--add-figure", metavar="NAME", help="add a public figure to the gallery from PHOTO files")
    p.add_argument("photos", nargs="*", default=[], metavar="PHOTO", help=argparse.SUPPRESS)
    p.add_argument("--gallery", metavar="DIR", help="face gallery directory (default: the profile's, or <data root>/gallery)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_profile_args(p)
    p.set_defaults(func=run)


def _settings(args):
    from tools.settings import IdentitySettings, SafetySettings

    try:
        from ui.cli import load_profile_from_args

        profile = load_profile_from_args(args)
        safety, identity = profile.safety, profile.identity
    except Exception:  # noqa: BLE001 - screening needs no models: fall back to defaults
        profile, safety, identity = None, SafetySettings(), IdentitySettings()
    if args.gallery:
        safety = safety.model_copy(update={"gallery_dir": args.gallery})
    return safety, identity, profile


def _screener(safety, profile):
    """The profile's prompt screener (its rules and its guard model), else the rules alone."""
    if profile is None:
        from tools.safety import PromptScreener

        return PromptScreener(safety)
    from agent.guard import screener_for

    return screener_for(profile.model_copy(update={"safety": safety}))


def run(args) -> int:
    from tools.errors import AtelierError

    safety, identity, profile = _settings(args)
    if args.add_figure:
        photos = ([args.text] if args.text else []) + list(args.photos)
        return _add_figure(args.add_figure, photos, safety, identity)
    if args.image:
        return _screen_image(args.image, safety, identity, args.json)
    if args.jsonl:
        return _batch(args.jsonl, _screener(safety, profile))
    if args.text:
        d = _screener(safety, profile).screen(args.text)
        if args.json:
            print(json.dumps(d.model_dump(), ensure_ascii=False))
        else:
            print(f"{d.decision} ({d.category}): {d.reason}" + (f" [matched: {d.matched}]" if d.matched else ""))
        return 0
    raise AtelierError("give a text, --jsonl FILE, --image FILE or --add-figure NAME PHOTO...")


def _batch(path: str, screener) -> int:
    from tools.safety.evals import context_of, read_jsonl

    for i, row in enumerate(read_jsonl(path), 1):
        d = screener.screen(row["text"], context_of(row))
        print(json.dumps({"id": row.get("id", i), "decision": d.decision, "category": d.category, "reason": d.reason},
                         ensure_ascii=False), flush=True)
    return 0


def _open_image(path: str):
    from tools.settings import LimitSettings
    from tools.store import decode_upload, read_upload_file

    limits = LimitSettings()
    return decode_upload(read_upload_file(path, limits), limits, name=path)  # screened at the working size


def _analyzer(identity):
    from tools.identity import FaceAnalyzer

    return FaceAnalyzer(identity)


def _screen_image(path: str, safety, identity, as_json: bool) -> int:
    from tools.safety import ImageScreener

    screener = ImageScreener(safety, _analyzer(identity))
    d = screener.screen(_open_image(path))
    if as_json:
        print(json.dumps({**d.model_dump(), "nsfw_detector": screener.nsfw_available,
                          "gallery_people": len(screener.gallery)}))
    else:
        print(f"{d.decision} ({d.category}): {d.reason}" + (f" [matched: {d.matched}]" if d.matched else ""))
        if not screener.nsfw_available:
            print("note: NSFW detection is off (install the `nsfw` extra: nudenet)", file=sys.stderr)
    return 0


def _add_figure(name: str, photos: list[str], safety, identity) -> int:
    from tools.errors import AtelierError
    from tools.safety import ImageScreener

    if not photos:
        raise AtelierError("--add-figure needs at least one PHOTO of the person")
    screener = ImageScreener(safety, _analyzer(identity))
    embeddings = []
    for path in photos:
        faces = screener._faces(_open_image(path))
        if len(faces) != 1:
            raise AtelierError(f"{path}: found {len(faces)} faces; use photos showing only {name}")
        embeddings.append(faces[0].embedding)
    where = screener.gallery.add(name, embeddings)
    print(f"added {name} ({len(embeddings)} photo(s)) to the face gallery: {where}")
    return 0
