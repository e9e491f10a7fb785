"""What a big upload costs through `/adjust`: prints figures, asserts nothing.

    python bench/upload_budget.py [--side 7000] [--cases png,jpeg] [--budgets off,default]
                                  [--profile-phases]

For each case (a 7000x7000 PNG that compresses to a few hundred KB, a 7000x7000 JPEG of
photo-like noise) and each budget (`off`: the working budget raised to the hard limits, i.e.
before the working size existed; `default`: `LimitSettings`' own `max_working_pixels` /
`max_working_side`), a fresh subprocess builds `Atelier(profile="tiny")` on a temporary store,
runs `session.send("/adjust exposure=+1", images=[path])` and reports:

- the wall time of that one turn (ingest, screening, adjust, seal, store);
- the peak RSS of the process (`ru_maxrss`) and what it was before the turn (models built);
- the size of the stored result and the `resized_from` note of the upload.

`--profile-phases` also prints the ten heaviest functions of the turn (cProfile, cumulative).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_image(kind: str, side: int, folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = folder / f"big-{side}.{ 'png' if kind == 'png' else 'jpg'}"
    if path.exists():
        return path
    y, x = np.mgrid[0:side, 0:side]
    if kind == "png":  # smooth bands: a tiny file (the reported case was 143 KB) that decodes to 147 MB
        rgb = np.stack([(x // 64) % 256, (y // 64) % 256, ((x + y) // 128) % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(path, format="PNG", optimize=True)
    else:  # photo-like: gradients with grain, quality 90
        rng = np.random.default_rng(0)
        base = np.stack([x * 255 // side, y * 255 // side, (x + y) * 255 // (2 * side)], axis=-1)
        rgb = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(path, format="JPEG", quality=90)
    return path


def child(path: str, budget: str, phases: bool) -> None:
    from agent import Atelier
    from tools.settings import LimitSettings

    root = tempfile.mkdtemp(prefix="atelier-bench-upload-")
    limits: dict = {"per_user": "100000/minute"}
    if budget == "off":
        hard = LimitSettings()
        limits.update(max_working_pixels=hard.max_pixels, max_working_side=hard.max_side)
    atelier = Atelier(profile="tiny", overrides={"store": {"root": root}, "limits": limits})
    atelier.session("warmup").send("/adjust exposure=+1", images=[_small(root)])  # build every service once
    before = _rss_mb()
    session = atelier.session("bench")
    profiler = None
    if phases:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    result = session.send("/adjust exposure=+1", images=[path])
    wall = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
    peak = _rss_mb()
    out = result.images[-1] if result.images else None
    upload = [v for v in session.history() if v.origin == "upload"]
    print(json.dumps({
        "wall_s": round(wall, 2), "rss_before_mb": round(before), "rss_peak_mb": round(peak),
        "result": f"{out.width}x{out.height}" if out is not None else None,
        "resized_from": upload[0].metadata.get("resized_from") if upload else None,
        "error": result.error.message if result.error is not None else None,
    }))
    if profiler is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(25)
        print(buf.getvalue(), file=sys.stderr)


def _small(root: str) -> str:
    import numpy as np
    from PIL import Image

    path = os.path.join(root, "warmup.png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)).save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--cases", default="png,jpeg")
    parser.add_argument("--budgets", default="off,default")
    parser.add_argument("--profile-phases", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.profile_phases)
        return 0

    from tools.settings import LimitSettings

    limits = LimitSettings()
    print(f"working budget (default): {limits.max_working_pixels / 1e6:.1f} MP, {limits.max_working_side} px a side; "
          f"hard limits {limits.max_pixels / 1e6:.0f} MP, {limits.max_side} px")
    folder = Path(tempfile.gettempdir()) / "atelier-bench-upload"
    folder.mkdir(exist_ok=True)
    for kind in args.cases.split(","):
        path = make_image(kind, args.side, folder)
        size_kb = path.stat().st_size / 1024
        for budget in args.budgets.split(","):
            cmd = [sys.executable, __file__, "--child", str(path), budget]
            if args.profile_phases:
                cmd.append("--profile-phases")
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            total = time.perf_counter() - t0
            label = f"{kind:4} {args.side}x{args.side} ({size_kb:,.0f} KB), budget {budget:7}"
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{label}: failed (rc {proc.returncode}): {tail}")
                continue
            r = json.loads(lines[-1])
            print(f"{label}: turn {r['wall_s']:7.2f} s, peak RSS {r['rss_peak_mb']:6,} MB "
                  f"(before the turn {r['rss_before_mb']:,} MB), result {r['result']}, "
                  f"resized_from {r['resized_from']}" + (f", error: {r['error']}" if r["error"] else "")
                  + f"  [process {total:.0f} s]")
            if args.profile_phases:
                print(proc.stderr[-6000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
