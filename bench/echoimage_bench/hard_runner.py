"""The hard suite: catalogue photos through the edits of `bench.hard`, held-out photos
through the same edits as negatives, and where every miss was lost.

`run_hard(photo_dir, out_dir, ...)` is the library function behind `scripts/bench_hard.py`
(`make bench-hard`). It splits and indexes the photos as `bench.runner` does (the same
split, the same catalogue for the same seed), then queries each catalogue photo (or a
seeded subset) through each hard edit; collage partners are held-out photos, so rank 1 has
one right answer. Each miss is put in one of three places: the original was never among
the candidates re-ranked, it was re-ranked but out-ranked, or it came first but was not
called a duplicate. Writes ``bench-hard.json`` and ``bench-hard.md``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from echoimage_bench.context import (
    Log,
    RunContext,
    catalogue_photo,
    end_phase,
    indexed_images,
    list_photos,
    machine_info,
    query_subset,
    read_bgr,
    split_photos,
)
from echoimage_bench.formatting import jsonable, markdown_table
from echoimage_bench.hard import HARD_EDITS, HardEdit, make_hard_query
from echoimage_bench.metrics import TARGET_FMR, TOP_K, percentile, rank_of, rate, recall_at_k
from echoimage_bench.trace import ask, diagnose, traced_engine, without_proof
from echoimage_bench.transforms import transform_rng

HARD_VERSION = 1

#: where a miss was lost
MISS_KINDS = ("never_reranked", "outranked", "not_duplicate")


def _stored_ids(settings: Any, urls: set[str]) -> dict[str, int]:
    """Store ids of the indexed images among urls."""
    return {u: i for u, i in indexed_images(settings).items() if u in urls}


def _ask(engine: Any, data: bytes) -> tuple[Any, float]:
    """Decode as query_bytes does and run query_image: (result, query_image ms)."""
    return ask(engine, data, TOP_K)


def _top(m: Any, truth: str | None) -> dict[str, Any]:
    return {"url": Path(m.url).name, "correct": m.url == truth if truth else None,
            "score": round(m.score, 4), "duplicate": m.duplicate,
            "orb_inliers": m.orb_inliers, "orb_matches": m.orb_matches,
            "hash_distance": m.hash_distance, "orientation": m.orientation, "votes": m.votes,
            "why": m.why}


def _positives(ctx: RunContext, engine: Any, edits: list[HardEdit], pool: list[np.ndarray]
               ) -> list[dict[str, Any]]:
    """Every query photo through every edit; partners drawn from the held-out pool."""
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    tick = ctx.log.loop("hard positives", len(ctx.query_photos) * len(edits))
    for i in ctx.query_photos:
        img, truth = catalogue_photo(ctx, i), ctx.urls[i]
        for e in edits:
            data = make_hard_query(img, e, transform_rng(ctx.seed, i, e.name), pool)
            res, ms = _ask(engine, data)
            rank = rank_of(truth, [m.url for m in res.matches])
            top = res.matches[0] if res.matches else None
            row: dict[str, Any] = {"edit": e.name, "photo": ctx.catalogue[i].name,
                                   "rank": rank, "duplicate": bool(top and top.duplicate),
                                   "score": top.score if top else 0.0, "ms": ms,
                                   "timings": res.timings, "rounds": res.rounds,
                                   "without_proof": without_proof(res), "miss": None}
            if rank != 1:
                row["miss"] = "outranked" if ctx.url_ids[truth] in engine.trace.reranked \
                    else "never_reranked"
            elif not row["duplicate"]:
                row["miss"] = "not_duplicate"
            if row["miss"]:
                t = next((m for m in res.matches if m.url == truth), None)
                row["top1"] = _top(top, truth) if top else None
                row["truth"] = _top(t, truth) if t else None
                if row["miss"] == "never_reranked":
                    row["diagnosis"] = diagnose(engine, data, ctx.url_ids[truth])
            rows.append(row)
            tick(len(rows))
        ctx.images.pop(i, None)
    end_phase(ctx, "hard_positives", t0)
    return rows


def _negatives(ctx: RunContext, engine: Any, edits: list[HardEdit], pool: list[np.ndarray],
               names: list[str]) -> list[dict[str, Any]]:
    """Every held-out photo through every edit (partners: the other held-out photos)."""
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    tick = ctx.log.loop("hard negatives", len(pool) * len(edits))
    for j, img in enumerate(pool):
        others = pool[:j] + pool[j + 1:]
        for e in edits:
            data = make_hard_query(img, e, transform_rng(ctx.seed, 1_000_000 + j, e.name),
                                   others)
            res, ms = _ask(engine, data)
            top = res.matches[0] if res.matches else None
            rows.append({"edit": e.name, "photo": names[j], "ms": ms,
                         "score": top.score if top else 0.0,
                         "duplicate": bool(top and top.duplicate),
                         "without_proof": without_proof(res), "rounds": res.rounds,
                         "top1": _top(top, None) if top else None})
            tick(len(rows))
    end_phase(ctx, "hard_negatives", t0)
    return rows


def summarise(pos: Sequence[dict[str, Any]], neg: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Recall, where the misses were lost, the negatives' false-match rate and latency."""
    ranks = [r["rank"] for r in pos]
    ms = [r["ms"] for r in pos]
    return {
        "n": len(pos),
        "recall_at_1": recall_at_k(ranks, 1) if ranks else None,
        "recall_at_5": recall_at_k(ranks, TOP_K) if ranks else None,
        "detected": rate(r["rank"] == 1 and r["duplicate"] for r in pos),
        "misses": {k: sum(1 for r in pos if r["miss"] == k) for k in MISS_KINDS},
        "negatives": len(neg),
        "false_match_rate": rate(r["duplicate"] for r in neg),
        "negative_max_score": round(max((r["score"] for r in neg), default=0.0), 4),
        "query_ms": {"p50": percentile(ms, 50), "p95": percentile(ms, 95)},
        "negative_query_ms_p50": percentile([r["ms"] for r in neg], 50),
        "copies_without_proof": sum(r.get("without_proof", 0) for r in [*pos, *neg]),
    }


def hard_edits_need(edits: Sequence[str]) -> int:
    """Held-out photos the edits need (collage partners, and one to edit)."""
    return max(HARD_EDITS[n].partners for n in edits) + 1


def run_hard_suite(ctx: RunContext, pool: list[np.ndarray], names: list[str],
                   edits: Sequence[str], negatives: int) -> dict[str, Any]:
    """The hard edits on ctx's catalogue (its store, `ctx.query_photos`) and the first
    `negatives` held-out photos of pool (all of them collage partners): per edit and over
    the compound, single and all edits, recall, where misses were lost and false matches.
    JSON-ready but for numpy scalars."""
    run = [HARD_EDITS[n] for n in edits]
    engine = traced_engine(ctx.settings)
    entries = int(engine.size)
    try:
        pos = _positives(ctx, engine, run, pool)
        neg = _negatives(ctx, engine, run, pool[:negatives], names) if negatives else []
    finally:
        engine.store.dispose()
    per = {e.name: summarise([r for r in pos if r["edit"] == e.name],
                             [r for r in neg if r["edit"] == e.name]) for e in run}
    comp = {e.name for e in run if e.compound}
    return {
        "entries": entries,
        "descriptions": {e.name: e.description for e in run},
        "edits": per,
        "summary": {
            "compound": summarise([r for r in pos if r["edit"] in comp],
                                  [r for r in neg if r["edit"] in comp]),
            "single": summarise([r for r in pos if r["edit"] not in comp],
                                [r for r in neg if r["edit"] not in comp]),
            "all": summarise(pos, neg)},
        "missed": [{k: v for k, v in r.items() if k != "timings"} for r in pos if r["miss"]],
        "false_matches": [r for r in neg if r["duplicate"]],
    }


def hard_table(suite: dict[str, Any]) -> str:
    """The hard edits' table: one row per edit, then the compound, single and all rows."""
    def f(v: float | None, d: int = 3) -> str:
        return "–" if v is None else f"{v:.{d}f}"

    rows = []
    for name, r in [*suite["edits"].items(), ("**compound**", suite["summary"]["compound"]),
                    ("**single**", suite["summary"]["single"]),
                    ("**all**", suite["summary"]["all"])]:
        m = r["misses"]
        rows.append([name, r["n"], f(r["recall_at_1"]), f(r["recall_at_5"]), f(r["detected"]),
                     f"{m['never_reranked']} / {m['outranked']} / {m['not_duplicate']}",
                     r["negatives"], f(r["false_match_rate"]), f(r["negative_max_score"], 2),
                     f(r["query_ms"]["p50"], 1), f(r["query_ms"]["p95"], 1),
                     f(r["negative_query_ms_p50"], 1)])
    return markdown_table(
        ["edit", "queries", "r@1", "r@5", "r@1 dup", "missed: not re-ranked / out-ranked / "
         "not dup", "negatives", "FMR", "neg max", "p50 ms", "p95 ms", "neg p50 ms"], rows)


#: what the hard table's columns mean
HARD_TABLE_NOTE = (
    "r@1 dup: the original first and called a copy. Misses: the original never "
    "re-ranked / re-ranked but out-ranked / first but not a copy. FMR: held-out "
    "queries whose top result is a copy. Latency: query_image (decoded → results), of "
    "the copies and of the held-out queries (neg).")


def render_hard_markdown(result: dict[str, Any]) -> str:
    """bench-hard.md: one row per edit, the compound and overall summaries, the command."""
    table = hard_table(result)
    d = result["dataset"]
    lines = [
        "# EchoImage hard-edit benchmark", "",
        f"{result['date']} · `{' '.join(result['command'])}`", "",
        f"{d['catalogue']} catalogue photos ({d['indexed']} indexed; {result['entries']:,} "
        f"entries searched), {d['query_photos']} "
        f"queried through {len(result['edits'])} edits; {d['negatives']} held-out photos "
        "through the same edits as negatives (collage partners are held-out photos).", "",
        table, "",
        f"{HARD_TABLE_NOTE} Copy verdicts without proof (same bytes, a hash within 5 bits "
        f"or geometric agreement): {result['summary']['all']['copies_without_proof']}.",
        "", "## Edits", "",
        *[f"* **{n}**: {e}" for n, e in result["descriptions"].items()], "",
        "## Misses", "", *miss_lines(result.get("missed", [])), ""]
    return "\n".join(lines)


def miss_lines(missed: Sequence[dict[str, Any]], limit: int = 60) -> list[str]:
    """One line per miss: where it was lost and the original's evidence (re-ranked) or,
    never re-ranked, its hash distance and the votes it got from each group of keypoints
    (votes, rank among the images voted for)."""
    if not missed:
        return ["None."]
    lines = []
    for r in missed[:limit]:
        t = r.get("truth")
        if r["miss"] == "never_reranked":
            d = r.get("diagnosis") or {}
            votes = ", ".join(f"{k[6:]} {v[0]} (#{v[1]})" for k, v in d.items()
                              if k.startswith("votes_"))
            what = f"hash {d.get('hash_distance')} bits (#{d.get('hash_rank')}); votes: {votes}"
        elif t is not None:
            what = (f"original: {t['orb_inliers']} inliers of {t['orb_matches']} matches, "
                    f"hash {t['hash_distance']}, votes {t['votes']}, score {t['score']}")
        else:
            what = "original out of the top results"
        lines.append(f"* {r['edit']} {r['photo']}: {r['miss'].replace('_', ' ')}; {what}")
    if len(missed) > limit:
        lines.append(f"* … and {len(missed) - limit} more (bench-hard.json)")
    return lines


def run_hard(photo_dir: str | Path, out_dir: str | Path, *, limit: int | None = None,
             seed: int = 0, negatives_fraction: float = 0.2,
             edits: Sequence[str] | None = None, negative_limit: int | None = None,
             data_dir: str | Path | None = None, progress: bool = True,
             command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the hard-edit benchmark on a folder of photos; write bench-hard.json and .md.

    Args:
        photo_dir: folder of photos (read, never copied).
        out_dir: where the run writes ``data/`` (a fresh store), ``catalogue.txt``,
            ``bench-hard.json`` and ``bench-hard.md``.
        limit: query only this many catalogue photos (the seeded subset `bench` uses).
        seed: seeds the split, the subset and every edit's parameters.
        negatives_fraction: fraction of the photos held out (negatives, collage partners).
        edits: names of the edits to run (default: all of HARD_EDITS).
        negative_limit: query only the first N held-out photos as negatives (all are
            still collage partners).
        data_dir: query this existing data directory instead of building one (a store
            padded by `echoimage bench`, under ``pad/scale-N``); it must hold this split's
            catalogue photos, by their paths.
        progress: progress lines on stderr.
        command: the command line to record (default: sys.argv).
    """
    from echoimage.config import Settings
    from echoimage_bench.runner import build_phase

    photo_dir, out_dir = Path(photo_dir), Path(out_dir)
    chosen = list(edits) if edits is not None else list(HARD_EDITS)
    unknown = [n for n in chosen if n not in HARD_EDITS]
    if unknown:
        raise ValueError(f"unknown edits: {', '.join(unknown)}")
    if limit is not None and limit < 1:
        raise ValueError("limit must be positive")
    log = Log(progress, "bench-hard")
    started = datetime.now(UTC)
    t_all = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_photos(photo_dir)
    catalogue, held = split_photos(files, seed, negatives_fraction)
    loaded = [(p.name, img) for p in held if (img := read_bgr(p)) is not None]
    names, pool = [n for n, _ in loaded], [img for _, img in loaded]
    need = hard_edits_need(chosen)
    if len(pool) < need:
        raise ValueError(f"{len(pool)} held-out photos; the edits need at least {need}")
    settings = Settings(data_dir=Path(data_dir) if data_dir else out_dir / "data",
                        database_url=None)
    ctx = RunContext(log=log, seed=seed, settings=settings, catalogue=catalogue,
               urls=[str(p) for p in catalogue], url_ids={}, query_photos=[])
    log(f"{len(files)} photos: {len(catalogue)} catalogue, {len(pool)} held out")
    if data_dir is None:
        build = build_phase(ctx, out_dir, catalogue)
    else:
        ctx.url_ids = _stored_ids(settings, set(ctx.urls))
        build = {"indexed": len(ctx.url_ids), "seconds": None, "images_per_s": None,
                 "data_dir": str(Path(data_dir).resolve())}
    indexed = [i for i, u in enumerate(ctx.urls) if u in ctx.url_ids]
    if not indexed:
        raise ValueError("no catalogue photo could be indexed")
    ctx.query_photos = query_subset(indexed, seed, limit)
    n_neg = len(pool) if negative_limit is None else min(negative_limit, len(pool))
    suite = run_hard_suite(ctx, pool, names, chosen, n_neg)
    result: dict[str, Any] = {
        "version": HARD_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "command": list(command) if command is not None else list(sys.argv),
        "machine": machine_info(),
        "params": {"photo_dir": str(photo_dir.resolve()), "limit": limit, "seed": seed,
                   "negatives_fraction": negatives_fraction, "edits": chosen,
                   "negative_limit": negative_limit, "k": TOP_K,
                   "target_false_match_rate": TARGET_FMR},
        "dataset": {"photos": len(files), "catalogue": len(catalogue),
                    "indexed": len(ctx.url_ids), "query_photos": len(ctx.query_photos),
                    "held_out": len(pool), "negatives": n_neg},
        "build": {k: build.get(k) for k in ("indexed", "seconds", "images_per_s",
                                             "data_dir")},
        **suite,
        "phases": {**ctx.phases, "total": round(time.perf_counter() - t_all, 2)},
    }
    result = jsonable(result)
    (out_dir / "bench-hard.json").write_text(json.dumps(result, indent=2))
    (out_dir / "bench-hard.md").write_text(render_hard_markdown(result))
    log(f"done in {result['phases']['total']:.0f}s: {out_dir / 'bench-hard.md'}")
    return result
