"""Fit the evidence model, choose the duplicate threshold and calibrate the stop rule.

Indexes a folder of photos (seed 1: not the split `echoimage bench` and bench_hard.py use),
queries copies through every transform of the main, hard and peer (perception's) suites
and held-out photos through their negative transforms with the full cascade, then fits
the logistic model of the evidence (echoimage/search/evidence.py), picks the threshold
for a false-match rate, checks the model's reliability on held-out photos and says what
each stop rule would have cost. Writes calibrate.json and calibrate.md to --out; --write
rewrites the model's table in echoimage/search/evidence.py. Example:

    python scripts/bench_calibrate.py ../shared/datasets/bsds500 --out /tmp/calibrate --limit 100
    python scripts/bench_calibrate.py ../shared/datasets/bsds500 --out /tmp/cal100k \\
        --data /tmp/lt/100k/data --limit 20 --negatives 40
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the calibration, print the markdown report."""
    parser = argparse.ArgumentParser(
        description="Fit the evidence model and the stop rule on copies and held-out "
                    "photos.",
        epilog="Example: bench_calibrate.py ../shared/datasets/bsds500 --out "
               "/tmp/calibrate --limit 100")
    parser.add_argument("photo_dir", type=Path, help="folder of photos (read, never copied)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder: store, calibrate.json, calibrate.md "
                             "(default: ./bench-out)")
    parser.add_argument("--limit", type=int, default=100,
                        help="catalogue photos queried as copies (default: 100)")
    parser.add_argument("--negatives", type=int, default=None,
                        help="held-out photos queried as non-copies (default: all)")
    parser.add_argument("--suites", default="main,hard,peers",
                        help="suites whose transforms are used (default: main,hard,peers)")
    parser.add_argument("--target-fmr", type=float, default=0.001,
                        help="false-match rate the threshold is chosen for (default: 0.001)")
    parser.add_argument("--data", type=Path, default=None,
                        help="calibrate on this existing (padded) catalogue, only read: its "
                             "photos are those of PHOTO_DIR whose names it holds, the rest "
                             "held out (default: index a seeded split into OUT/data)")
    parser.add_argument("--seed", type=int, default=1, help="RNG seed (default: 1)")
    parser.add_argument("--copies-only", action="store_true",
                        help="query for copies only, as `query --copies-only` and scans do")
    parser.add_argument("--write", action="store_true",
                        help="rewrite the model table in echoimage/search/evidence.py")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    from echoimage.errors import EchoImageError
    from echoimage_bench.calibrate import render_calibration_markdown, run_calibration

    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    try:
        result = run_calibration(
            args.photo_dir, args.out, limit=args.limit, negatives=args.negatives,
            seed=args.seed, suites=[s.strip() for s in args.suites.split(",") if s.strip()],
            target_fmr=args.target_fmr, write=args.write, progress=not args.quiet,
            data_dir=args.data, copies_only=args.copies_only,
            command=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    except (EchoImageError, ValueError) as exc:
        print(f"bench_calibrate: error: {exc}", file=sys.stderr)
        return 1
    print(render_calibration_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
