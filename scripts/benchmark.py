"""Run the EchoImage benchmark on a folder of photos; print the markdown table.

Writes bench.json and bench.md to --out. Progress goes to stderr. Example:

    python scripts/benchmark.py ../shared/datasets/bsds500 --out /tmp/bench --limit 100 --no-scale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v.replace("_", "")) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def _pair(text: str) -> tuple[int, int]:
    values = _ints(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError("expected two integers: IMAGES,QUERIES")
    return values[0], values[1]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print the markdown report."""
    parser = argparse.ArgumentParser(
        description="Copy-detection benchmark: index a folder of photos, query transformed "
                    "copies, compare with pHash and the seed's brute force.",
        epilog="Example: benchmark.py ../shared/datasets/bsds500 --out /tmp/bench "
               "--limit 100 --no-scale")
    parser.add_argument("photo_dir", type=Path, help="folder of photos (read, never copied)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder: store, padding cache, bench.json, bench.md "
                             "(default: ./bench-out)")
    parser.add_argument("--limit", type=int, default=None,
                        help="query only N catalogue photos (a seeded subset)")
    parser.add_argument("--scale", type=_ints, default=(10_000, 100_000),
                        help="store sizes to pad to and re-time (default: 10000,100000)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale phase")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default: 0)")
    parser.add_argument("--seed-subset", type=_pair, default=(40, 3),
                        help="seed brute force: catalogue images,queries per transform "
                             "(default: 40,3)")
    parser.add_argument("--latency-queries", type=int, default=200,
                        help="queries timed at every scale (default: 200)")
    parser.add_argument("--workers", type=int, default=None,
                        help="padding pool processes (default: CPU count)")
    parser.add_argument("--foreground-padding", action="store_true",
                        help="pad after the recall sweep instead of concurrently with it")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip the side-by-side run with PDQ and perception's PHash")
    parser.add_argument("--no-hard", action="store_true",
                        help="skip the hard edits (memes, collages, compound copies)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    from echoimage.errors import EchoImageError
    from echoimage_bench import render_markdown, run_benchmark

    try:
        result = run_benchmark(
            args.photo_dir, args.out, limit=args.limit, seed=args.seed,
            scale=() if args.no_scale else args.scale, seed_subset=args.seed_subset,
            latency_queries=args.latency_queries, workers=args.workers,
            background_padding=not args.foreground_padding, peers=not args.no_peers,
            hard=not args.no_hard, progress=not args.quiet,
            command=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    except (EchoImageError, ValueError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1
    print(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
