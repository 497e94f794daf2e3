"""How much of a query holds the GIL: one process answers the same queries with 1 thread,
then with N threads at once (N = the cores), and the ratio of the two rates is reported.

A query whose work is all in code that releases the GIL (OpenCV, FAISS, SQLite, numpy on
large arrays) runs N times as fast on N threads; one that is all Python runs no faster.
The catalogue and the queries are those of `scripts/loadtest.py` (same --data-dir, made
first if missing); nothing goes over HTTP, so the figure is the engine's alone. Each
configuration runs --repeat times, alternating, and the medians are reported.

Example:

    .venv/bin/python scripts/bench_threads.py ../shared/datasets/bsds500 --entries 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadtest import ROOT, ensure_catalogue, make_queries  # noqa: E402


def rate(engine: object, blobs: list[bytes], threads: int, k: int) -> tuple[float, float]:
    """(queries/s, process CPU seconds per query) answering blobs on `threads` threads."""
    def one(data: bytes) -> None:
        engine.query_bytes(data, k)  # type: ignore[attr-defined]

    c0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, blobs))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(blobs) / wall, cpu / len(blobs)


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photo_dir")
    ap.add_argument("--data-dir", default=str(ROOT / "bench-out" / "loadtest"))
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--no-copy", type=float, default=0.7)
    ap.add_argument("--queries", type=int, default=60, help="queries per measurement")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import cv2

    from echoimage.api import Catalogue
    from echoimage.config import Settings

    def log(msg: str) -> None:
        print(f"bench_threads: {msg}", file=sys.stderr, flush=True)

    data_dir = Path(args.data_dir).resolve()
    # loadtest's catalogue (its default seed, 0); the queries are seeded apart
    cat, held = ensure_catalogue(data_dir, Path(args.photo_dir), args.entries, args.photos,
                                 args.negatives, 0, log)
    queries = make_queries(cat, held, data_dir / "catalogue", args.queries, args.no_copy,
                           args.seed)
    blobs = [q.data for q in queries]
    cv2.setNumThreads(1)  # as the server sets it
    with Catalogue(Settings(data_dir=data_dir / "data"), serving=True) as catalogue:
        engine = catalogue.search_engine
        for data in blobs[:3]:  # warm-up
            engine.query_bytes(data, args.k)
        runs: dict[int, list[tuple[float, float]]] = {1: [], args.threads: []}
        for r in range(args.repeat):
            for n in runs:
                runs[n].append(rate(engine, blobs, n, args.k))
                log(f"run {r + 1}, {n} thread(s): {runs[n][-1][0]:.2f} q/s, "
                    f"{1000 * runs[n][-1][1]:.0f} ms CPU per query")
    one = statistics.median(q for q, _ in runs[1])
    many = statistics.median(q for q, _ in runs[args.threads])
    cpu = statistics.median(c for _, c in runs[1])
    print(f"{len(blobs)} queries ({args.no_copy:.0%} no-copy) at {args.entries:,} entries, "
          f"median of {args.repeat}: 1 thread {one:.2f} q/s ({1000 * cpu:.0f} ms CPU per "
          f"query); {args.threads} threads {many:.2f} q/s: **{many / one:.2f}x** "
          f"(all work outside the GIL would give up to {args.threads}x on {args.threads} "
          "free cores)")


if __name__ == "__main__":
    main()
