"""The live-index benchmark (see bench/echoimage_bench/live.py).

Usage: scripts/bench_live.py PHOTO_DIR [--out bench-out] [--entries 100000]
       [--update-rounds N] [--worker-nice 0,10]
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
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--recall-photos", type=int, default=100)
    parser.add_argument("--update-rounds", type=int, default=1,
                        help="run the 100/100/100 update this many times, with other "
                             "changes each time (default: 1)")
    parser.add_argument("--worker-nice", default=None,
                        help="the feature workers' niceness of each round in turn, e.g. "
                             "0,10 (default: the setting's)")
    args = parser.parse_args()
    if args.update_rounds < 1:
        parser.error("--update-rounds must be at least 1")
    nice = [int(v) for v in args.worker_nice.split(",")] if args.worker_nice else None
    from echoimage_bench.live import run_live_benchmark

    result = run_live_benchmark(args.photo_dir, args.out, entries=args.entries,
                                recall_photos=args.recall_photos,
                                update_rounds=args.update_rounds, worker_nice=nice)
    print(json.dumps({k: v for k, v in result.items() if k != "growth"}, indent=2,
                     default=str))
    print(json.dumps(result["growth"]["difference_points"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
