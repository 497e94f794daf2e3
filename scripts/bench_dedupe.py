"""The de-duplication benchmark (see bench/echoimage_bench/dedupe.py).

Usage: scripts/bench_dedupe.py PHOTO_DIR [--out bench-out] [--scales 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--scales", default="10000,100000")
    args = parser.parse_args()
    from echoimage_bench.dedupe import run_dedupe_benchmark

    scales = tuple(int(s) for s in args.scales.split(",") if s)
    result = run_dedupe_benchmark(args.photo_dir, args.out, scales=scales)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
