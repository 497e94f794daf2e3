"""The fault matrix at a larger scale than `make test` runs it: fuzzed images through the
indexer and the query path, fuzzed catalogue files and pages through the readers, and kill
-9 at random moments of builds and updates over many seeds. Prints (and writes) the counts:
inputs tried, crashes, hangs, lost images; all but the first must be 0.

Usage: scripts/faults.py [--inputs 20000] [--kill-seeds 10] [--out faults.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20_000,
                        help="mutated images through the indexer (others in proportion)")
    parser.add_argument("--kill-seeds", type=int, default=10,
                        help="kill-at-random-moments runs (5 builds/updates each)")
    parser.add_argument("--out", type=Path, default=Path("faults.json"))
    args = parser.parse_args()

    import numpy as np
    from fuzzing import (
        SEED_HTML,
        FuzzTally,
        catalogue_runner,
        fuzz,
        query_runner,
        run_indexer,
        run_page,
        seed_catalogues,
        seed_images,
    )

    from echoimage.api import Catalogue
    from echoimage.config import Settings

    t0 = time.perf_counter()
    report: dict[str, object] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rng = np.random.default_rng(20261127)
    images = list(seed_images().values())

    tally = FuzzTally()
    fuzz(tally, "indexer", images, rng, args.inputs, run_indexer)
    report["indexer"] = tally.as_dict()
    print("indexer", report["indexer"], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", workers=1)
        with Catalogue(settings) as catalogue:
            catalogue.build()  # the bundled sample catalogue
            tally = FuzzTally()
            fuzz(tally, "query", images, rng, args.inputs // 4,
                 query_runner(catalogue.search_engine))
        report["query"] = tally.as_dict()
        print("query", report["query"], flush=True)

    tally = FuzzTally()
    for name, (kind, data) in seed_catalogues().items():
        fuzz(tally, f"catalogue-{name}", [data], rng, args.inputs // 4, catalogue_runner(kind))
    fuzz(tally, "page", [SEED_HTML], rng, args.inputs // 4, run_page)
    report["catalogues_and_pages"] = tally.as_dict()
    print("catalogues and pages", report["catalogues_and_pages"], flush=True)

    kills = {"runs": 0, "failed": 0, "failures": []}
    for seed in range(1, args.kill_seeds + 1):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_faults.py", "-k", "kill_at_random_moments"],
            cwd=REPO, capture_output=True, text=True,
            env={**os.environ, "ECHOIMAGE_KILL_SEED": str(seed)})
        kills["runs"] += 1
        if proc.returncode:
            kills["failed"] += 1
            kills["failures"].append({"seed": seed, "tail": proc.stdout[-1500:]})
        print(f"kill seed {seed}: {'ok' if proc.returncode == 0 else 'FAILED'}", flush=True)
    report["kills"] = kills
    report["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(report, indent=2))
    bad = sum(int(report[k]["crashes"]) + int(report[k]["hangs"])  # type: ignore[index]
              for k in ("indexer", "query", "catalogues_and_pages")) + kills["failed"]
    print(f"{'clean' if bad == 0 else f'{bad} FAULTS'}; written to {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
