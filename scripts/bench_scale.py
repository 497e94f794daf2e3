"""The scale benchmark (see bench/echoimage_bench/scale.py): real photos among derived padding.

Usage: scripts/bench_scale.py PHOTO_DIR [--out bench-out] [--scale 100000,1000000]
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
    parser.add_argument("--scale", default="100000,1000000",
                        help="store sizes, smallest first (default: 100000,1000000)")
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--query-photos", type=int, default=100,
                        help="photos queried under every transform (default: 100)")
    parser.add_argument("--negatives", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the padded store")
    args = parser.parse_args()
    try:
        scales = tuple(int(s.replace("_", "")) for s in args.scale.split(",") if s.strip())
    except ValueError:
        parser.error(f"--scale: expected comma-separated integers: {args.scale!r}")
    from echoimage_bench.scale import render_scale_markdown, run_scale_benchmark

    result = run_scale_benchmark(args.photo_dir, args.out, scales=scales,
                                 photos=args.photos, query_photos=args.query_photos,
                                 negatives=args.negatives,
                                 keep=args.keep)
    md = render_scale_markdown(result)
    (args.out / "scale.md").write_text(md + "\n")
    print(md)
    print(json.dumps({k: v for k, v in result.items() if k != "scales"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
