"""Engine benchmark as a script: `python bench/engines.py --profile tiny [--random-weights] [--size 1024]`.

Same figures as `atelier bench engines` (per-step latency, per-tool end-to-end latency, peak memory).
"""

from __future__ import annotations

import argparse
import sys

from ui.commands.bench import register

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench/engines.py")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "engines", *sys.argv[1:]])
    sys.exit(args.func(args))
