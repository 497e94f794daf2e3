"""Run the hard-edit benchmark on a folder of photos; print the markdown table.

Catalogue photos go through compound edits, collages, quarter crops, strong rotations and
warps, stickers, noise, tiny copies and colour filters; held-out photos go through the same
edits as negatives. Writes bench-hard.json and bench-hard.md to --out. Example:

    python scripts/bench_hard.py ../shared/datasets/bsds500 --out /tmp/bench-hard --limit 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the hard suite, print the markdown report."""
    from echoimage_bench.hard import HARD_EDITS

    parser = argparse.ArgumentParser(
        description="Hard-edit benchmark: index a folder of photos, query them through "
                    "compound edits, collages and strong warps, and held-out photos through "
                    "the same edits; say where every miss was lost.",
        epilog="Example: bench_hard.py ../shared/datasets/bsds500 --out /tmp/bench-hard "
               "--limit 100")
    parser.add_argument("photo_dir", type=Path, help="folder of photos (read, never copied)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder: store, bench-hard.json, bench-hard.md "
                             "(default: ./bench-out)")
    parser.add_argument("--limit", type=int, default=None,
                        help="query only N catalogue photos (a seeded subset)")
    parser.add_argument("--negatives", type=int, default=None,
                        help="query only N held-out photos as negatives (default: all)")
    parser.add_argument("--edits", default=None,
                        help=f"comma-separated edits (default: all: {', '.join(HARD_EDITS)})")
    parser.add_argument("--data", type=Path, default=None,
                        help="query this existing data directory instead of building one, "
                             "e.g. a store padded to 100k by `echoimage bench` "
                             "(OUT/pad/scale-100000); it must hold the catalogue photos")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default: 0)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    from echoimage.errors import EchoImageError
    from echoimage_bench.hard_runner import render_hard_markdown, run_hard

    edits = [e.strip() for e in args.edits.split(",") if e.strip()] if args.edits else None
    try:
        result = run_hard(args.photo_dir, args.out, limit=args.limit, seed=args.seed,
                          edits=edits, negative_limit=args.negatives, data_dir=args.data,
                          progress=not args.quiet,
                          command=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    except (EchoImageError, ValueError) as exc:
        print(f"bench_hard: error: {exc}", file=sys.stderr)
        return 1
    print(render_hard_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
