"""Run the scan benchmark on a folder of photos; print the markdown table.

A site of edited copies of catalogue photos and held-out photos is served on 127.0.0.1 and
scanned against the catalogue padded to --scale entries; the engine alone answers the same
images in the same run (throughput ratio), and the unchanged site is scanned again.
Writes scan.json and scan.md to --out. Example:

    python scripts/bench_scan.py ../shared/datasets/bsds500 --out bench-out
    python scripts/bench_scan.py ../shared/datasets/bsds500 --images 200 --pages 10 \\
        --copies 20 --scale 10000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the scan benchmark, print the markdown report."""
    parser = argparse.ArgumentParser(
        description="Scan benchmark: scan a local site of copies and held-out photos "
                    "against a padded catalogue; findings recall and precision, re-scan "
                    "time, scan throughput against the engine alone.",
        epilog="Example: bench_scan.py ../shared/datasets/bsds500 --out bench-out")
    parser.add_argument("photo_dir", type=Path, help="folder of photos (read, never copied)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"),
                        help="output folder: scan-data, scan-site, scan.json, scan.md "
                             "(default: ./bench-out)")
    parser.add_argument("--images", type=int, default=2000,
                        help="images on the site (default: 2000)")
    parser.add_argument("--pages", type=int, default=100, help="pages (default: 100)")
    parser.add_argument("--copies", type=int, default=200,
                        help="of the images, edited copies of catalogue photos (default: 200)")
    parser.add_argument("--scale", type=int, default=100_000,
                        help="catalogue entries after padding (default: 100000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="comparing threads of the scan and the engine alone "
                             "(default: one per core)")
    parser.add_argument("--engine-images", type=int, default=None, metavar="N",
                        help="the engine alone answers a seeded sample of N of the site's "
                             "images in each of its two runs (default: all of them)")
    parser.add_argument("--data", type=Path, default=None,
                        help="use this data directory (kept from an earlier run with --keep: "
                             "OUT/scan-data, or the load benchmark's DIR/data) instead of "
                             "indexing and padding a new one; its photos are the catalogue, "
                             "the rest held out")
    parser.add_argument("--keep", action="store_true",
                        help="keep the padded data directory (OUT/scan-data) for --data")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default: 0)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    from echoimage.errors import EchoImageError
    from echoimage_bench.scan import render_scan_markdown, run_scan_benchmark

    try:
        result = run_scan_benchmark(
            args.photo_dir, args.out, images=args.images, pages=args.pages,
            copies=args.copies, scale=args.scale, seed=args.seed, data_dir=args.data,
            threads=args.threads, keep=args.keep, progress=not args.quiet,
            engine_images=args.engine_images,
            command=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    except (EchoImageError, ValueError) as exc:
        print(f"bench_scan: error: {exc}", file=sys.stderr)
        return 1
    print(render_scan_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
