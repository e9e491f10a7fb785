"""`atelier verify FILE [--json]`: watermark (detected, id, bit agreement) and C2PA state of a file."""

from __future__ import annotations

import json


def register(sub) -> None:
    from ui.cli import add_profile_args

    p = sub.add_parser("verify", help="check a file's invisible watermark and C2PA content credentials")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON (keys watermark.detected, watermark.id, c2pa.state)")
    p.add_argument("--key-dir", help="trust anchors / registry location (default: the profile's, or <data root>/keys)")
    p.add_argument("--rivagan", action="store_true", help="also read the optional RivaGAN layer (slow on a CPU)")
    p.add_argument("--no-search", action="store_true", help="skip the synchronisation search (faster, misses crops/flips)")
    add_profile_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from tools.provenance import verify_bytes
    from tools.settings import LimitSettings
    from tools.store import match_bomb_guard, read_upload_file

    try:
        from ui.cli import load_profile_from_args

        profile = load_profile_from_args(args)
        key_dir = Path(args.key_dir or profile.provenance.key_dir or Path(profile.store.root) / "keys")
        limits = profile.limits
        watermark_key = profile.provenance.watermark_key
    except Exception:  # noqa: BLE001 - verifying needs no models
        from tools.provenance import default_key_dir

        key_dir = Path(args.key_dir) if args.key_dir else default_key_dir()
        limits = LimitSettings()
        watermark_key = None
    data = read_upload_file(args.file, limits)
    match_bomb_guard(limits)  # PIL refuses what max_pixels refuses before decoding
    report = verify_bytes(data, key_dir=key_dir, search=not args.no_search, rivagan=args.rivagan,
                          watermark_key=watermark_key)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    w, c = report["watermark"], report["c2pa"]
    if w.get("detected"):
        print(f"watermark: detected, id {w['id']} ({w['bits_agreeing']}/48 bits agree; threshold {w['threshold_bits']})")
    else:
        print(f"watermark: not detected (best agreement {w.get('bits_agreeing', 0)}/48"
              + (f"; threshold {w['threshold_bits']}" if w.get("threshold_bits") else "") + ")")
    if "rivagan" in w:
        r = w["rivagan"]
        print(f"RivaGAN layer: {'detected' if r['detected'] else 'not detected'} ({r['bits_agreeing']}/32 bits; threshold {r['threshold_bits']})")
    if c["state"] == "absent":
        print("C2PA: absent (no content credentials)")
    else:
        print(f"C2PA: {c['state']}; actions {', '.join(a for a in c.get('actions', []) if a) or '-'}; "
              f"source {', '.join(c.get('digital_source_types', [])) or '-'}; signer {c.get('signer') or '-'}"
              + (f"; failures {', '.join(c['failures'])}" if c.get("failures") else ""))
    print(f"metadata: {'says AI-generated' if report['metadata']['ai_generated'] else 'no AI-generated label'}")
    return 0
