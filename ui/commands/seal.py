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

    from tools.errors import BadImageError
    from tools.provenance import Sealer
    from tools.settings import LimitSettings, ProvenanceSettings
    from tools.store import decode_upload

    try:
        from ui.cli import load_profile_from_args

        profile = load_profile_from_args(args)
        settings, root = profile.provenance, Path(profile.store.root)
    except Exception:  # noqa: BLE001 - sealing needs no models
        from tools.settings import default_data_root

        settings, root = ProvenanceSettings(), Path(default_data_root())
    key_dir = Path(args.key_dir or settings.key_dir or root / "keys")
    try:
        data = Path(args.input).read_bytes()
    except OSError as err:
        raise BadImageError(f"{args.input}: cannot read file ({err.strerror})") from None
    image = decode_upload(data, LimitSettings(), name=Path(args.input).name)
    parent = None
    if args.parent:
        try:
            parent = Path(args.parent).read_bytes()
        except OSError as err:
            raise BadImageError(f"{args.parent}: cannot read file ({err.strerror})") from None
    source = args.source_type or ("compositeWithTrainedAlgorithmicMedia" if parent else "trainedAlgorithmicMedia")
    sealed = Sealer(settings, key_dir).seal(image, action=args.action, source_type=source, parent=parent,
                                            tool_call={"name": "seal", "args": {"input": Path(args.input).name}})
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ""):
        print(f"note: sealed images are PNG; writing PNG bytes to {out}")
    out.write_bytes(sealed.data)
    print(f"sealed {out} (watermark id {sealed.watermark_id}, C2PA {'on' if settings.c2pa else 'off'}, key dir {key_dir})")
    return 0
