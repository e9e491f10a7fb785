"""`atelier seal IN OUT`: watermark an image, add C2PA content credentials and AI metadata."""

from __future__ import annotations


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("seal", help="watermark an image and add C2PA content credentials (PNG out)")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--action", choices=["created", "edited"], default="created")
    p.add_argument("--source-type", default=None,
                   help="IPTC digital source type (default: trainedAlgorithmicMedia; compositeWithTrainedAlgorithmicMedia "
                        "for edits with --parent)")
    p.add_argument("--parent", metavar="FILE", help="the image this one was edited from (added as ingredient)")
    p.add_argument("--key-dir", help="signing key directory (default: the profile's, or <data root>/keys)")
    add_profile_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from tools.provenance import Sealer, verify_bytes
    from tools.provenance.credentials import declares_ai
    from tools.settings import LimitSettings, ProvenanceSettings
    from tools.store import decode_upload, read_upload_file

    try:
        from ui.cli import load_profile_from_args

        profile = load_profile_from_args(args)
        settings, root, limits = profile.provenance, Path(profile.store.root), profile.limits
    except Exception:  # noqa: BLE001 - sealing needs no models
        from tools.settings import default_data_root

        settings, root, limits = ProvenanceSettings(), Path(default_data_root()), LimitSettings()
    key_dir = Path(args.key_dir or settings.key_dir or root / "keys")
    # Sealed at its own size (the user's file, not a working copy); the hard limits still hold.
    data = read_upload_file(args.input, limits)
    image = decode_upload(data, limits, name=args.input, fit=False)
    parent = read_upload_file(args.parent, limits) if args.parent else None
    source = args.source_type or ("compositeWithTrainedAlgorithmicMedia" if parent else "trainedAlgorithmicMedia")
    sealer = Sealer(settings, key_dir)
    call = {"name": "seal", "args": {"input": Path(args.input).name}}
    prior = verify_bytes(data, key_dir=key_dir, registry=sealer.registry, watermark_key=settings.watermark_key)
    if prior["watermark"].get("detected") or prior["c2pa"].get("present"):
        # already sealed: a new manifest over the old one (the file, with its manifest, is the
        # ingredient) and the first watermark kept, so its id stays findable
        sealed = sealer.seal(image, action="edited", source_type=source, parent=parent or data, tool_call=call,
                             specific=["c2pa.edited.metadata"], ai_generated=declares_ai(data),
                             existing_id=prior["watermark"].get("id") if prior["watermark"].get("detected") else None)
        print(f"{args.input} was already sealed: added a manifest over its credentials, kept its watermark")
    else:
        sealed = sealer.seal(image, action=args.action, source_type=source, parent=parent, tool_call=call)
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ""):
        print(f"note: sealed images are PNG; writing PNG bytes to {out}")
    out.write_bytes(sealed.data)
    print(f"sealed {out} (watermark id {sealed.watermark_id}, C2PA {'on' if settings.c2pa else 'off'}, key dir {key_dir})")
    return 0
