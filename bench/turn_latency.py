"""How long a whole turn takes without the planner: prints figures, asserts nothing.

    python bench/turn_latency.py [--profile tiny] [--turns 10]

Measures on one machine, with a fresh data root:
- a slash-command turn (`/adjust exposure=+1`, `/relight warm left`): the request screen, the
  call's validation and screen, the tool, the result screen, the seal (watermark + C2PA), the
  store and the checkpoint, and the composed answer (no model call);
- the same through `session.stream` until the first event (what a surface shows first).
The target of issue 13 is a whole slash-command turn below 1 s on the tiny profile.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _photo() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 160, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _fmt(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return f"p50 {statistics.median(values) * 1000:7.1f} ms, p90 {p90 * 1000:7.1f} ms, n={len(values)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    from agent import Atelier

    with tempfile.TemporaryDirectory() as root:
        app = Atelier(args.profile, {"store": {"root": root}})
        session = app.session("bench-turns")
        t0 = time.perf_counter()
        session.send("/adjust exposure=+0.5", images=[_photo()])  # first turn: loads screens, sealer, store
        first = time.perf_counter() - t0
        results: dict[str, list[float]] = {"/adjust exposure=+1": [], "/relight warm left": []}
        first_event: list[float] = []
        for _ in range(args.turns):
            for command, times in results.items():
                t0 = time.perf_counter()
                result = session.send(command)
                times.append(time.perf_counter() - t0)
                assert not result.error, result.error
            t0 = time.perf_counter()
            stream = session.stream("/adjust contrast=1.1")
            next(iter(stream))
            first_event.append(time.perf_counter() - t0)
            for _ in stream:
                pass
        print(f"profile {args.profile}: first turn of the process {first * 1000:.0f} ms (loads the screens and the sealer)")
        for command, times in results.items():
            print(f"  {command:<22} whole turn: {_fmt(times)}")
        print(f"  {'first event':<22} {_fmt(first_event)}")
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
