"""The cluster benchmark (see bench/echoimage_bench/cluster.py): PostgreSQL and a Dask cluster
beside SQLite and the local process pool (build rate, recall, vote fan-out).

Usage: scripts/bench_cluster.py PHOTO_DIR [--out bench-out] [--entries 100000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--entries", type=int, default=100_000,
                        help="store size of the fan-out measurement (default: 100000)")
    parser.add_argument("--reps", type=int, default=3, help="builds per mode (default: 3)")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server to use (default: start one for the run)")
    args = parser.parse_args()
    from echoimage_bench.cluster import render_cluster_markdown, run_cluster_benchmark

    result = run_cluster_benchmark(args.photo_dir, args.out, database_url=args.database_url,
                                   entries=args.entries, reps=args.reps)
    print(render_cluster_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
