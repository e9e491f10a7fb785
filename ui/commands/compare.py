"""`atelier compare SOURCE RESULT [--json]`: what an edit kept and what drifted, for any two images.

Per source face: identity distance to its match in the result and the verdict (the identity check
the edit tools run); then the geometry (shift of the centre in source pixels, scale, rotation, by
`tools.drift.measure`, the function the edit tools use) and the change outside the edited area
(the area is estimated from the aligned difference; 0-1, on the result as it is).
"""

from __future__ import annotations

import json


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("compare", help="compare a source image and an edit of it: faces kept, shift, zoom, drift")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("result", metavar="RESULT")
    p.add_argument("--json", action="store_true",
                   help="print JSON (keys faces, all_same_person, drift.shift_x_px, drift.scale, drift.outside_change)")
    add_profile_args(p)
    p.set_defaults(func=run)


def compare_images(source, result, identity=None) -> dict:
    """The comparison as a plain dict (what `--json` prints, less the file names)."""
    from tools import drift
    from tools.errors import AtelierError
    from tools.identity import FaceAnalyzer
    from tools.settings import IdentitySettings

    report = drift.measure(source, result)
    out: dict = {"size": {"source": list(source.size), "result": list(result.size)}}
    try:
        analyzer = FaceAnalyzer(identity or IdentitySettings())
        checks = analyzer.compare(source, result)
        out["faces"] = [c.model_dump(mode="json") for c in checks]
        out["all_same_person"] = all(c.same_person for c in checks)
        out["identity_backend"] = analyzer.backend_name if analyzer.enabled else None
    except AtelierError as err:  # no face model here: the geometry is still worth reporting
        out["faces"], out["all_same_person"], out["identity_error"] = None, None, str(err)
    figures = report.figures()
    out["drift"] = {
        "registered": report.estimated,
        "shift_x_px": figures["shift_x_px"], "shift_y_px": figures["shift_y_px"],
        "shift_px": figures["global_shift_px"],
        "scale": figures["scale"], "rotation_deg": figures["rotation_deg"],
        "outside_change": figures.get("outside_change"), "changed_fraction": figures.get("changed_fraction"),
        "mean_change": figures["mean_change"],
    }
    return out


def run(args) -> int:
    from tools.settings import IdentitySettings, LimitSettings
    from tools.store import decode_upload, read_upload_file

    try:
        from ui.cli import load_profile_from_args

        profile = load_profile_from_args(args)
        limits, identity = profile.limits, profile.identity
    except Exception:  # noqa: BLE001 - comparing needs no profile
        limits, identity = LimitSettings(), IdentitySettings()
    images = [decode_upload(read_upload_file(path, limits), limits, name=path) for path in (args.source, args.result)]
    out = compare_images(*images, identity=identity)
    if args.json:
        print(json.dumps({"source": args.source, "result": args.result, **out}, indent=2))
        return 0
    faces = out["faces"]
    if faces is None:
        print(f"faces: not checked ({out['identity_error']})")
    elif not faces:
        print("faces: none in the source")
    else:
        for face in faces:
            if face["distance"] is None:
                print(f"face {face['face'] + 1}: lost (no matching face in the result)")
            else:
                verdict = "same person" if face["same_person"] else "DIFFERENT person"
                print(f"face {face['face'] + 1}: identity distance {face['distance']:.3f} ({verdict})")
    d = out["drift"]
    if not d["registered"]:
        print("geometry: the two images do not register (not the same picture?)")
    else:
        zoom = (d["scale"] - 1) * 100
        zoom_words = ("no zoom" if abs(zoom) < 0.05
                      else f"{'zoomed in' if zoom > 0 else 'zoomed out'} {abs(zoom):.1f}%")
        sx, sy = round(d["shift_x_px"], 1) + 0, round(d["shift_y_px"], 1) + 0  # (no "-0.0")
        print(f"geometry: shift {d['shift_px']:.1f} px (x {sx:+.1f}, y {sy:+.1f}), "
              f"scale {d['scale']:.3f} ({zoom_words}), rotation {d['rotation_deg'] + 0:.2f} deg")
    print(f"change: outside the edit {d['outside_change']:.4f} (the edit covers {d['changed_fraction'] * 100:.0f}% "
          f"of the image); whole image {d['mean_change']:.4f}")
    return 0
