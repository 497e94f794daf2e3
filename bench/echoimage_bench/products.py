"""Product shots: different products photographed alike, none a copy of another.

A shop photographs its products the same way: one object in the middle of a white
background. Such photos share their layout, and a proof that rests on the layout (a pHash
within a few bits) or on a detail they share (letters of one font) calls different
products copies. This benchmark builds a catalogue of synthetic product shots (a box or a
round object of its own size and colour, with a label of its own: short words and stripes;
or flat objects without a label) and queries other shots made the same way: every result
called a copy is a false accusation. The report says how many queries had one, and what
proved them (README, "Limits").
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from echoimage_bench.context import Log, machine_info
from echoimage_bench.synthetic import product_shot


def run_products(out_dir: str | Path, *, catalogue: int = 150, queries: int = 150,
                 seed: int = 0, label: bool = True, progress: bool = True) -> dict[str, Any]:
    """Index `catalogue` product shots into out_dir/products (a new store every run), query
    `queries` others, and count the results called copies (all false): by verdict, by what
    proved them, and the queries that had any. Writes products.json beside the store."""
    import echoimage
    from echoimage.search.evidence import Evidence

    if catalogue < 1 or queries < 1:
        raise ValueError("catalogue and queries must be positive")
    log = Log(progress, "bench products")
    root = Path(out_dir) / "products"
    shots = root / "catalogue"
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.jpg"):
        old.unlink()
    for i in range(catalogue):
        cv2.imwrite(str(shots / f"p{i:04d}.jpg"), product_shot(i, seed, label))
    data = root / "data"
    if data.exists():
        import shutil

        shutil.rmtree(data)
    t0 = time.perf_counter()
    with echoimage.open(data) as cat:
        cat.build(str(shots))
        build_s = time.perf_counter() - t0
        log(f"{catalogue} product shots indexed in {build_s:.1f}s")
        called: list[dict[str, Any]] = []
        hit_queries = 0
        ms: list[float] = []
        tick = log.loop("queries", queries)
        for n in range(queries):
            i = catalogue + n
            _, enc = cv2.imencode(".jpg", product_shot(i, seed, label),
                                   [cv2.IMWRITE_JPEG_QUALITY, 90])
            t = time.perf_counter()
            res = cat.query(enc.tobytes())
            ms.append((time.perf_counter() - t) * 1000)
            hit_queries += bool(res.copies)
            for m in res.copies:
                called.append({"query": i, "match": Path(m.url).name, "verdict": m.verdict.value,
                               "proof": Evidence.of(m).proof().value, "score": round(m.score, 4),
                               "hash_distance": m.hash_distance, "inliers": m.orb_inliers,
                               "matches": m.orb_matches, "spread": round(m.spread, 3),
                               "missing": None if np.isnan(m.missing) else round(m.missing, 3),
                               "interior": None if np.isnan(m.interior)
                               else round(m.interior, 3),
                               "why": m.why})
            tick(n + 1)
        result = {
            "catalogue": catalogue, "queries": queries, "seed": seed, "label": label,
            "indexed": int(cat.status()["counts"].get("indexed", 0)), "build_s": round(build_s, 2),
            "machine": machine_info(),
            "queries_with_copies": hit_queries,
            "false_copy_results": len(called),
            "by_verdict": dict(Counter(c["verdict"] for c in called)),
            "by_proof": dict(Counter(c["proof"] for c in called)),
            "query_ms_p50": round(float(np.median(ms)), 1),
            "called": called,
        }
    (root / "products.json").write_text(json.dumps(result, indent=1))
    return result


def render_products_markdown(r: dict[str, Any]) -> str:
    """The report: how many queries were answered with a copy, and what proved them."""
    kind = "with labels" if r["label"] else "flat, without labels"
    lines = [
        f"{r['catalogue']} product shots ({kind}) in the catalogue, {r['queries']} others "
        f"queried (seed {r['seed']}); none is a copy of another.",
        "",
        "| measure | value |",
        "|:---|---:|",
        f"| queries answered with a copy (false) | **{r['queries_with_copies']}** of "
        f"{r['queries']} |",
        f"| results called copies | {r['false_copy_results']} |",
    ]
    for k, v in sorted(r["by_verdict"].items()):
        lines.append(f"| … verdict {k} | {v} |")
    for k, v in sorted(r["by_proof"].items()):
        lines.append(f"| … proved by {k} | {v} |")
    lines.append(f"| query p50 (ms) | {r['query_ms_p50']} |")
    worst = sorted(r["called"], key=lambda c: (-c["score"], c["query"]))[:5]
    if worst:
        lines += ["", "Some of them:", ""]
        lines += [f"* query {c['query']} → {c['match']}: {c['verdict']}, {c['why']} "
                  f"(pHash {c['hash_distance']} bits, {c['inliers']} of {c['matches']} "
                  f"matches agree, spread {c['spread']})" for c in worst]
    return "\n".join(lines)
