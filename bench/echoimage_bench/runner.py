"""The benchmark: a copy-detection suite built from any folder of photos.

`run_benchmark(photo_dir, out_dir, ...)` is the library function behind
`scripts/benchmark.py` (and, later, `echoimage bench`). It

1. splits the sorted photo list with a seeded RNG into a catalogue (~80%) and held-out
   negatives (~20%), indexes the catalogue with `build_index` into a fresh store under
   ``out_dir/data`` and measures build throughput, memory and bytes per image;
2. queries every catalogue photo (or a deterministic subset of ``limit``) under each
   transform in `TRANSFORMS`, JPEG-encoded (q90 unless the transform has its own quality),
   through one `SearchEngine.query_bytes` in this process: recall@1/@5, the verdict
   (`duplicate`) and the scores of correct answers;
3. queries the negatives under `NEGATIVE_TRANSFORMS`: false-match rate, score quantiles and
   the calibrated threshold that keeps false matches <= 1%;
4. times `SearchEngine.query_image` (decoded image → results) and `query_bytes` on a fixed
   sample of queries, at catalogue size and again after padding the store to each ``scale``
   with rows derived from the photos' (`bench.derived`; cached in ``out_dir/pad``);
5. runs two baselines the same way: 64-bit pHash nearest neighbour over the stored hashes,
   and the seed's brute-force SSIM + ORB + colour histogram score on a small subset;
6. puts EchoImage side by side with its peers (PDQ, perception's PHash; those installed)
   on the transforms of perception's benchmark, copies and held-out negatives alike
   (`bench.peer_suite`).

Everything it finds is returned as a JSON-ready dict and written to ``out_dir/bench.json``;
`render_markdown` turns it into the table written to ``out_dir/bench.md``. Progress goes to
stderr only. The transforms, metrics, table, synthetic-image and seed-score helpers are
pure functions; padding (`build_padding`) and the run itself do the I/O.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from echoimage_bench.baselines import (
    PHASH_THRESHOLD,
    load_hashes,
    phash_baseline_latency,
    phash_query,
    seed_baseline,
)
from echoimage_bench.colour import colour_report
from echoimage_bench.context import (
    Log,
    QueryRecord,
    RunContext,
    catalogue_photo,
    end_phase,
    list_photos,
    machine_info,
    query_subset,
    read_bgr,
    split_photos,
)
from echoimage_bench.formatting import jsonable
from echoimage_bench.hard import HARD_EDITS
from echoimage_bench.hard_runner import hard_edits_need, run_hard_suite
from echoimage_bench.memory import ProcessTreePeak, children_peak_rss_mb, self_peak_rss_mb
from echoimage_bench.metrics import (
    TARGET_FMR,
    TOP_K,
    just_above,
    percentile,
    quantiles,
    rank_of,
    rate,
    threshold_at_fmr,
)
from echoimage_bench.padding import (
    PaddingJob,
    build_padding,
    padding_cached,
    padding_job,
    padding_process,
    read_padding_meta,
)
from echoimage_bench.peer_suite import run_peer_suite
from echoimage_bench.report import (
    DIAG_NOTE,
    per_transform_summary,
    render_markdown,
    run_notes,
    summarise_records,
)
from echoimage_bench.trace import without_proof
from echoimage_bench.transforms import (
    NEGATIVE_TRANSFORMS,
    QUERY_QUALITY,
    RECOLOUR_TRANSFORMS,
    TRANSFORMS,
    Transform,
    make_query,
    transform_rng,
)

BENCH_VERSION = 1


def build_phase(ctx: RunContext, out_dir: Path, catalogue: list[Path]) -> dict[str, Any]:
    """Index the catalogue photos into a fresh store (timed, with its peak memory and sizes);
    records their store ids in ctx."""
    from echoimage.api import Catalogue
    from echoimage.indexing.status import data_dir_size
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    t0 = time.perf_counter()
    data_dir = ctx.settings.data_dir
    if data_dir.exists():
        shutil.rmtree(data_dir)
    listing = out_dir / "catalogue.txt"
    listing.write_text("".join(f"{p}\n" for p in catalogue))
    ctx.log(f"indexing {len(catalogue)} catalogue photos into {data_dir}")
    with ProcessTreePeak() as peak, Catalogue(ctx.settings) as built:
        summary = built.build(str(listing))
    indexed = int(summary.counts.get("indexed", 0))
    engine = open_store(ctx.settings)
    with session_factory(engine)() as session:
        known = repo.known_images(session)
        stored = repo.storage_bytes(session)
    engine.dispose()
    disk = data_dir_size(ctx.settings)
    ctx.url_ids = {u: k.id for u, k in known.items() if k.status == "indexed"}
    per = (lambda b: round(b / indexed, 1)) if indexed else (lambda b: None)
    out = {
        "images": len(catalogue), "indexed": indexed, "counts": dict(summary.counts),
        "failures": [{"url": u, "status": s, "reason": r} for u, s, r in summary.failures],
        "seconds": round(summary.seconds, 3),
        "images_per_s": round(indexed / summary.seconds, 2) if summary.seconds else None,
        "cpu_seconds": round(summary.cpu_seconds, 3),
        "cpu_ms_per_image": round(1000 * summary.cpu_seconds / indexed, 2) if indexed else None,
        "workers": ctx.settings.workers or os.cpu_count(),
        "index_entries": summary.index_entries,
        "memory": {"rusage_children_mb": children_peak_rss_mb(), **peak.as_dict()},
        "storage": {
            "store_columns_bytes": stored,
            "store_columns_bytes_per_image": {k: per(v) for k, v in stored.items()
                                              if k != "images"},
            "store_file_bytes": disk.get("store_file"),
            "store_file_bytes_per_image": per(disk["store_file"]) if "store_file" in disk
            else None,
            "index_file_bytes": disk.get("index_files"),
            "index_files": {p.name: p.stat().st_size for p in
                            sorted(ctx.settings.index_dir.glob("*")) if p.is_file()},
            "index_file_bytes_per_image": per(disk.get("index_files", 0)),
        },
    }
    end_phase(ctx, "build", t0)
    return out


def _diagnose(ctx: RunContext, engine: Any, data: bytes, truth: str) -> dict[str, Any]:
    """Why a query missed, from outside the engine: where its original stands in the hash
    shortlist (best of the 8 orientations, as the engine searches) and, when the engine
    has a local-feature index, whether the original gets enough votes. Never raises."""
    try:
        from echoimage.features.decode import decode_image
        from echoimage.features.dihedral import NAMES
        from echoimage.features.hashes import hash_input, oriented_phashes

        s = ctx.settings
        img = decode_image(data, s.max_pixels, getattr(s, "query_work_size", s.work_size))
        oriented = np.frombuffer(b"".join(oriented_phashes(hash_input(img.gray))),
                                 np.uint8).reshape(8, 1, -1)
        dist = np.bitwise_count(np.bitwise_xor(ctx.phash_codes[None], oriented)).sum(axis=2)
        best = dist.min(axis=0)
        row = int(np.searchsorted(ctx.phash_ids, ctx.url_ids[truth]))
        d = int(best[row])
        hash_rank = 1 + int((best < d).sum())
        out: dict[str, Any] = {
            "truth_hash_distance": d, "truth_orientation": NAMES[int(dist[:, row].argmin())],
            "truth_hash_rank": hash_rank,
            "in_hash_rerank": d <= s.max_hash_distance and hash_rank <= s.rerank_n}
        live = getattr(engine, "live", None)
        if live is not None:
            from echoimage.features.orb import orb_features
            from echoimage.index.local import LocalParams

            voted = live.snapshot().parts.vote(
                orb_features(img.gray, s.query_orb_features).descriptors,
                LocalParams.from_settings(s), getattr(s, "vote_n", 4))
            votes = {v.id: v.votes for v in voted}
            out["truth_votes"] = votes.get(ctx.url_ids[truth], 0)
            out["in_votes"] = out["truth_votes"] >= getattr(s, "min_votes", 1)
        out["reranked"] = bool(out["in_hash_rerank"] or out.get("in_votes"))
        return out
    except Exception as exc:  # diagnosis must never stop the benchmark
        return {"error": f"{type(exc).__name__}: {exc}", "reranked": None}


def _match_dict(m: Any, truth: str | None = None) -> dict[str, Any]:
    return {"url": Path(m.url).name if not m.url.startswith("synthetic:") else m.url,
            "correct": m.url == truth if truth is not None else None,
            "score": round(m.score, 4), "duplicate": m.duplicate, "ssim": round(m.ssim, 4),
            "orb_matches": m.orb_matches, "orb_inliers": m.orb_inliers,
            "hash_distance": m.hash_distance, "orientation": m.orientation}


def _sweep(ctx: RunContext, engine: Any, transforms: list[Transform]
           ) -> tuple[list[QueryRecord], dict[str, Any]]:
    """Recall sweep: every query photo under every transform, through query_bytes."""
    from echoimage.features.decode import decode_image

    t0 = time.perf_counter()
    s = ctx.settings
    recs: list[QueryRecord] = []
    failures: dict[str, dict[str, Any]] = {
        t.name: {"shortlist_miss": 0, "rerank_miss": 0, "undiagnosed": 0, "examples": []}
        for t in transforms}
    total = len(ctx.query_photos) * len(transforms)
    tick = ctx.log.loop("recall sweep", total)
    done = 0
    for i in ctx.query_photos:
        img = catalogue_photo(ctx, i)
        truth = ctx.urls[i]
        for t in transforms:
            data = make_query(img, t, transform_rng(ctx.seed, i, t.name))
            q0 = time.perf_counter()
            res = engine.query_bytes(data, k=TOP_K)
            e2e = (time.perf_counter() - q0) * 1000
            ranked = [m.url for m in res.matches]
            rank = rank_of(truth, ranked)
            top = res.matches[0] if res.matches else None
            gray = decode_image(data, s.max_pixels, s.work_size).gray
            p_rank, p_top, p_truth = phash_query(ctx, gray, truth)
            recs.append(QueryRecord(t.name, i, rank, top.score if top else 0.0,
                                  bool(top and top.duplicate), e2e,
                                  p_rank, p_top, p_truth,
                                  top.colour_distance if top else None,
                                  bool(top and top.exact), without_proof(res)))
            if rank != 1:
                diag = _diagnose(ctx, engine, data, truth)
                f = failures[t.name]
                key = {True: "rerank_miss", False: "shortlist_miss"}.get(diag["reranked"],
                                                                          "undiagnosed")
                f[key] += 1
                f["diagnosis_note"] = DIAG_NOTE
                if len(f["examples"]) < 3:
                    truth_m = next((m for m in res.matches if m.url == truth), None)
                    f["examples"].append({
                        "photo": ctx.catalogue[i].name, "rank": rank, **diag,
                        "top1": _match_dict(top, truth) if top else None,
                        "truth": _match_dict(truth_m, truth) if truth_m else None})
            done += 1
            tick(done)
        ctx.images.pop(i, None)
    end_phase(ctx, "recall_sweep", t0)
    return recs, failures


def _negatives(ctx: RunContext, engine: Any, negatives: list[Path]) -> dict[str, Any]:
    from echoimage.features.decode import decode_image

    t0 = time.perf_counter()
    s = ctx.settings
    rows: list[dict[str, Any]] = []
    tick = ctx.log.loop("negatives", len(negatives) * len(NEGATIVE_TRANSFORMS))
    for j, path in enumerate(negatives):
        img = read_bgr(path)
        if img is None:
            continue
        for name in NEGATIVE_TRANSFORMS:
            t = TRANSFORMS[name]
            data = make_query(img, t, transform_rng(ctx.seed, 1_000_000 + j, name))
            res = engine.query_bytes(data, k=TOP_K)
            top = res.matches[0] if res.matches else None
            gray = decode_image(data, s.max_pixels, s.work_size).gray
            _, p_top, _ = phash_query(ctx, gray, None)
            rows.append({"photo": path.name, "transform": name,
                         "without_proof": without_proof(res),
                         "score": top.score if top else 0.0,
                         "duplicate": bool(top and top.duplicate), "phash_top_dist": p_top,
                         "top1": _match_dict(top) if top else None})
            tick(len(rows))
    end_phase(ctx, "negatives", t0)
    scores = [r["score"] for r in rows]
    by_t = {}
    for name in NEGATIVE_TRANSFORMS:
        sub = [r for r in rows if r["transform"] == name]
        by_t[name] = {"n": len(sub), "false_match_rate": rate(r["duplicate"] for r in sub),
                      "phash_false_match_rate": rate(r["phash_top_dist"] <= PHASH_THRESHOLD
                                                     for r in sub),
                      "score_quantiles": quantiles([r["score"] for r in sub])}
    worst = sorted(rows, key=lambda r: -r["score"])[:5]
    return {
        "photos": len(negatives), "transforms": list(NEGATIVE_TRANSFORMS), "n": len(rows),
        "false_match_rate": rate(r["duplicate"] for r in rows),
        "phash_false_match_rate": rate(r["phash_top_dist"] <= PHASH_THRESHOLD for r in rows),
        "phash_threshold": PHASH_THRESHOLD,
        "score_quantiles": quantiles(scores, (0, 50, 90, 95, 99, 100)),
        "by_transform": by_t, "highest_scoring": worst, "_scores": scores,
        "false_matches": sum(r["duplicate"] for r in rows),
        "copies_without_proof": sum(r["without_proof"] for r in rows),
    }


def _hard_suite(ctx: RunContext, negatives: list[Path]) -> dict[str, Any]:
    """The hard edits (every one) on the run's catalogue and held-out photos."""
    loaded = [(p.name, img) for p in negatives if (img := read_bgr(p)) is not None]
    names, pool = [n for n, _ in loaded], [img for _, img in loaded]
    need = hard_edits_need(list(HARD_EDITS))
    if len(pool) < need:
        ctx.log(f"hard edits skipped: {len(pool)} held-out photos, they need {need}")
        return {"ran": False, "skipped": f"{len(pool)} held-out photos; the hard edits "
                                         f"need at least {need}"}
    return {"ran": True, **run_hard_suite(ctx, pool, names, list(HARD_EDITS), len(pool))}


def evidence_summary(recs: Sequence[QueryRecord], neg: dict[str, Any],
                     peer_res: dict[str, Any], hard_res: dict[str, Any]) -> dict[str, Any]:
    """Over every suite that ran: copy verdicts without proof (never any), and the
    held-out queries called copies (false matches)."""
    suites = {"main": {"n": neg["n"], "false_matches": neg["false_matches"]}}
    unproven = sum(r.without_proof for r in recs) + neg["copies_without_proof"]
    queries = len(recs) + neg["n"]
    if peer_res.get("methods"):
        suites["peers"] = {"n": peer_res["negatives"],
                           "false_matches": len(peer_res["echoimage_false_matches"])}
        unproven += peer_res["echoimage_copies_without_proof"]
        queries += peer_res["copies"] + peer_res["negatives"]
    if hard_res.get("ran"):
        every = hard_res["summary"]["all"]
        suites["hard"] = {"n": every["negatives"], "false_matches": len(hard_res["false_matches"])}
        unproven += every["copies_without_proof"]
        queries += every["n"] + every["negatives"]
    n = sum(v["n"] for v in suites.values())
    fm = sum(v["false_matches"] for v in suites.values())
    return {"copies_without_proof": unproven, "queries": queries, "negatives": suites,
            "all_negatives": {"n": n, "false_matches": fm,
                              "false_match_rate": fm / n if n else None}}


def _latency_sample(ctx: RunContext, transforms: list[Transform], n: int, extra: bool = False
                    ) -> list[tuple[int, str]]:
    """A seeded sample of (photo, transform) over the main transforms, or the extra ones."""
    pairs = [(i, t.name) for t in transforms if t.extra == extra for i in ctx.query_photos]
    if n >= len(pairs):
        return pairs
    rng = np.random.default_rng([ctx.seed, 0x1A7 + extra])
    pick = sorted(rng.choice(len(pairs), size=n, replace=False).tolist())
    return [pairs[k] for k in pick]


def _no_copy_sample(ctx: RunContext, negatives: list[Path], n: int
                    ) -> list[tuple[int, str, bytes]]:
    """A seeded sample of n held-out photos under the negative transforms, as the negatives
    phase makes them: queries with no copy in the catalogue."""
    pairs = [(j, name) for name in NEGATIVE_TRANSFORMS for j in range(len(negatives))]
    if n < len(pairs):
        rng = np.random.default_rng([ctx.seed, 0x0C0])
        pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), size=n,
                                                     replace=False).tolist())]
    out = []
    for j, name in pairs:
        img = read_bgr(negatives[j])
        if img is not None:
            out.append((j, name, make_query(img, TRANSFORMS[name],
                                            transform_rng(ctx.seed, 1_000_000 + j, name))))
    return out


def _time_queries(ctx: RunContext, engine: Any, sample: list[tuple[int, str, bytes]], label: str,
                  copies: bool = True) -> dict[str, Any]:
    """query_image (decoded → results) and query_bytes (end to end) on the sample: copies of
    catalogue photos (r@1 on the sample), or held-out photos (copies=False: the share
    called a copy); the p50 of each stage, and of each round of the cascade over the
    queries that ran it."""
    for _, _, data in sample[:3]:  # warm-up: caches, lazy imports
        engine.query_bytes(data, k=TOP_K)
    img_ms, bytes_ms, decode_ms, hits = [], [], [], []
    stages: dict[str, list[float]] = {}
    rounds: dict[str, list[float]] = {}
    tick = ctx.log.loop(f"latency {label}", len(sample))
    for n, (i, _, data) in enumerate(sample, 1):
        d0 = time.perf_counter()
        dec = engine.decode(data)  # as query_bytes decodes
        d1 = time.perf_counter()
        res = engine.query_image(dec, k=TOP_K, sha256=None)
        d2 = time.perf_counter()
        engine.query_bytes(data, k=TOP_K)
        d3 = time.perf_counter()
        decode_ms.append((d1 - d0) * 1000)
        img_ms.append((d2 - d1) * 1000)
        bytes_ms.append((d3 - d2) * 1000)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
        for k, v in getattr(res, "rounds", {}).items():
            rounds.setdefault(k, []).append(v)
        hits.append(bool(res.matches) and res.matches[0].url == ctx.urls[i] if copies
                    else res.found)
        tick(n)
    return {
        "entries": int(engine.size), "queries": len(sample), **_delta_info(engine),
        ("recall_at_1" if copies else "false_match_rate"): rate(hits),
        "rounds_ms_p50": {k: percentile(v, 50) for k, v in rounds.items()},
        "rounds_ran": {k: len(v) / len(sample) for k, v in rounds.items()},
        "query_image_ms": {"p50": percentile(img_ms, 50), "p95": percentile(img_ms, 95),
                           "mean": float(np.mean(img_ms))},
        "query_bytes_ms": {"p50": percentile(bytes_ms, 50), "p95": percentile(bytes_ms, 95),
                           "mean": float(np.mean(bytes_ms))},
        "decode_ms_p50": percentile(decode_ms, 50),
        "stage_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
    }


def _delta_info(engine: Any) -> dict[str, Any]:
    """The parts the engine searches, and the store rows it holds in memory (not yet in
    the index files)."""
    live = getattr(engine, "live", None)
    if live is None:
        return {}
    snap = live.snapshot()
    return {"engine_parts": len(snap.parts.parts),
            "engine_delta_rows": sum(len(p.touched) for p in snap.parts.parts
                                     if p.name.startswith("delta"))}


def _scale(ctx: RunContext, job: PaddingJob, scales: Sequence[int],
           sample: list[tuple[int, str, bytes]], parts: list[tuple[int, str, bytes]],
           no_copy: list[tuple[int, str, bytes]], built: dict[str, Any]) -> dict[str, Any]:
    """Time the latency samples (main transforms; parts of photos; held-out photos) on
    each padded store (padding must be complete)."""
    from echoimage.search.engine import SearchEngine
    from echoimage.store.db import open_store

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for scale in scales:
        if scale not in job.scales:
            out[str(scale)] = {"skipped": f"scale {scale} is not above the catalogue size"}
            continue
        d = job.pad_root / f"scale-{scale}"
        meta = read_padding_meta(d)
        if meta is None or meta.get("key") != job.key or not meta.get("complete"):
            out[str(scale)] = {"skipped": "padding did not complete (see the log)"}
            continue
        settings = ctx.settings.model_copy(update={"data_dir": d})
        engine = open_store(settings)
        l0 = time.perf_counter()
        try:
            search = SearchEngine(settings, engine)  # rebuilds the indexes if they are stale
            load_s = time.perf_counter() - l0
            ctx.log(f"scale {scale:,}: engine loaded ({search.size:,} entries, {load_s:.1f}s"
                    f"{'; its indexes were stale and rebuilt' if load_s > 5 else ''}); "
                    f"timing {len(sample)} queries")
            res = _time_queries(ctx, search, sample, f"{scale:,}")
            if parts:
                res["parts"] = _time_queries(ctx, search, parts, f"{scale:,} parts")
            if no_copy:
                res["no_copy"] = _time_queries(ctx, search, no_copy, f"{scale:,} no copy",
                                               copies=False)
        except Exception as exc:  # one broken scale must not lose the whole run
            ctx.log(f"scale {scale:,}: failed: {type(exc).__name__}: {exc}")
            out[str(scale)] = {"skipped": f"engine failed at this scale: "
                                          f"{type(exc).__name__}: {exc}",
                               "seconds": round(time.perf_counter() - l0, 2),
                               "padding": meta}
            continue
        finally:
            engine.dispose()
        meta = {**meta, "cached": scale not in built.get("built_scales", []),
                "built_concurrently_with": built.get("concurrent_with")}
        out[str(scale)] = {**res, "engine_load_seconds": round(load_s, 3),
                           "index_file_bytes": sum(p.stat().st_size for p in
                                                   settings.index_dir.glob("*")),
                           "padding": meta}
    end_phase(ctx, "scale", t0)
    return out


def run_benchmark(photo_dir: str | Path, out_dir: str | Path, *, limit: int | None = None,
                  seed: int = 0, scale: Sequence[int] = (10_000, 100_000),
                  seed_subset: tuple[int, int] = (40, 3), negatives_fraction: float = 0.2,
                  latency_queries: int = 200, workers: int | None = None,
                  background_padding: bool = True, peers: bool = True, hard: bool = True,
                  progress: bool = True, command: Sequence[str] | None = None
                  ) -> dict[str, Any]:
    """Run the copy-detection benchmark on a folder of photos; write bench.json and bench.md.

    Args:
        photo_dir: folder of photos (searched recursively). They are read, never copied.
        out_dir: where the run writes: ``data/`` (a fresh store, rebuilt every run),
            ``catalogue.txt``, ``pad/scale-N/`` (padded stores, cached across runs),
            ``bench.json`` and ``bench.md``.
        limit: query only this many catalogue photos (a seeded subset); None queries all.
        seed: seeds the catalogue/negative split, the query subset, the random transforms
            and the synthetic padding.
        scale: store sizes to pad to and re-time (values not above the catalogue size are
            skipped); empty to skip the scale phase.
        seed_subset: (catalogue images, queries per transform) of the seed's brute force.
        negatives_fraction: fraction of the photos held out of the catalogue as negatives.
        latency_queries: size of the fixed query sample timed at every scale.
        workers: processes of the padding pool (default: CPU count); the build uses
            Settings.workers.
        background_padding: build missing padding in a separate process while the recall
            sweep runs (the sweep's own timings are then taken under load; the latency
            figures come from a quiet phase either way). False pads after the sweep.
        peers: run PDQ and perception's PHash beside EchoImage on perception's transforms.
        hard: run the hard edits (echoimage_bench.hard) on the same catalogue and held-out
            photos.
        progress: progress lines on stderr.
        command: the command line to record (default: sys.argv).

    Returns:
        The JSON-ready result (also written to ``out_dir/bench.json``).
    """
    from echoimage.config import Settings
    from echoimage.search.engine import SearchEngine
    from echoimage.store.db import open_store

    photo_dir, out_dir = Path(photo_dir), Path(out_dir)
    if limit is not None and limit < 1:
        raise ValueError("limit must be positive")
    if seed_subset[0] < 0 or seed_subset[1] < 0:
        raise ValueError("seed_subset values must be >= 0")
    if any(s < 1 for s in scale):
        raise ValueError("scale values must be positive")
    log = Log(progress)
    machine = machine_info()
    started = datetime.now(UTC)
    t_all = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_photos(photo_dir)
    if len(files) < 2:
        raise ValueError(f"{photo_dir} holds {len(files)} photos; at least 2 are needed")
    catalogue, negatives = split_photos(files, seed, negatives_fraction)
    settings = Settings(data_dir=out_dir / "data", database_url=None)
    ctx = RunContext(log=log, seed=seed, settings=settings, catalogue=catalogue,
               urls=[str(p) for p in catalogue], url_ids={}, query_photos=[])
    log(f"{len(files)} photos: {len(catalogue)} catalogue, {len(negatives)} negatives")

    build = build_phase(ctx, out_dir, catalogue)
    load_hashes(ctx)
    indexed = [i for i, u in enumerate(ctx.urls) if u in ctx.url_ids]
    if not indexed:
        raise ValueError("no catalogue photo could be indexed")
    ctx.query_photos = query_subset(indexed, seed, limit)
    transforms = list(TRANSFORMS.values())

    job = padding_job(ctx, out_dir, scale, workers, progress) if scale else None
    todo = [s for s in job.scales if not padding_cached(job, s)] if job else []
    pad_proc = None
    pad_info: dict[str, Any] = {"built_scales": todo, "concurrent_with": None}
    engine = SearchEngine(settings, open_store(settings, create=False))
    try:
        if todo and background_padding:
            mp = multiprocessing.get_context("forkserver")
            pad_proc = mp.Process(target=padding_process, args=(job,),
                                  name="echoimage-bench-padding")
            pad_t0 = time.perf_counter()
            pad_proc.start()
            pad_info["concurrent_with"] = "recall sweep and negatives"
            log(f"padding {', '.join(f'{s:,}' for s in todo)} in a background process "
                f"(pid {pad_proc.pid}) while the recall sweep runs")
        recs, failures = _sweep(ctx, engine, transforms)
        recolour = list(RECOLOUR_TRANSFORMS.values())
        colour_recs, colour_failures = _sweep(ctx, engine, recolour)
        neg = _negatives(ctx, engine, negatives)
        if pad_proc is not None:
            w0 = time.perf_counter()
            log("waiting for the padding process")
            pad_proc.join()
            ctx.phases["padding_wait"] = round(time.perf_counter() - w0, 2)
            ctx.phases["padding_wall"] = round(time.perf_counter() - pad_t0, 2)
            if pad_proc.exitcode != 0:
                log(f"padding process failed (exit code {pad_proc.exitcode})")
            pad_proc = None
    finally:
        if pad_proc is not None and pad_proc.is_alive():
            pad_proc.terminate()
            pad_proc.join()
    peer_res = run_peer_suite(ctx, engine, negatives) if peers else {"ran": False}
    hard_res = _hard_suite(ctx, negatives) if hard else {"ran": False}
    neg_scores = neg.pop("_scores")
    thr = threshold_at_fmr(neg_scores, TARGET_FMR)

    t0 = time.perf_counter()
    samples = [[(i, name, make_query(catalogue_photo(ctx, i), TRANSFORMS[name],
                                     transform_rng(seed, i, name))) for i, name in pairs]
               for pairs in (_latency_sample(ctx, transforms, latency_queries),
                             _latency_sample(ctx, transforms, latency_queries // 2, True))]
    sample, parts = samples
    no_copy = _no_copy_sample(ctx, negatives, latency_queries // 2)
    ctx.images.clear()
    latency = {"catalogue": _time_queries(ctx, engine, sample, "catalogue")}
    if parts:
        latency["catalogue"]["parts"] = _time_queries(ctx, engine, parts, "catalogue parts")
    if no_copy:
        latency["catalogue"]["no_copy"] = _time_queries(ctx, engine, no_copy,
                                                        "catalogue no copy", copies=False)
    phash_latency = phash_baseline_latency(ctx, sample)
    end_phase(ctx, "latency", t0)
    engine.store.dispose()
    rss_before_scale = self_peak_rss_mb()

    seed_res = seed_baseline(ctx, transforms, seed_subset)
    scale_res: dict[str, Any] = {}
    if job is not None:
        if todo and not background_padding:
            t0 = time.perf_counter()
            build_padding(job)
            ctx.phases["padding_wall"] = round(time.perf_counter() - t0, 2)
        scale_res = _scale(ctx, job, list(scale), sample, parts, no_copy, pad_info)
    latency.update({k: v for k, v in scale_res.items() if "skipped" not in v})

    per_t = per_transform_summary(recs, transforms, thr)
    for name, r in per_t.items():
        r["seed"] = (seed_res.get("by_transform") or {}).get(name)
        r["failures"] = failures[name]
    main = [r for r in recs if not TRANSFORMS[r.transform].extra]
    extra = [r for r in recs if TRANSFORMS[r.transform].extra]
    s_main = summarise_records(main, thr)
    cal = {
        "target_false_match_rate": TARGET_FMR,
        "threshold": thr,
        "negatives": len(neg_scores),
        "false_match_rate_at_threshold": rate(s >= thr for s in neg_scores)
        if thr is not None else None,
        "recall_at_threshold_main": s_main["echoimage"]["recall_at_calibrated_threshold"],
        "recall_at_threshold_by_transform": {
            k: v["echoimage"]["recall_at_calibrated_threshold"] for k, v in per_t.items()},
        "zero_false_match_threshold": just_above(max(neg_scores)) if neg_scores else None,
        "current_duplicate_threshold": settings.duplicate_threshold,
        "false_match_rate_at_current": neg["false_match_rate"],
        "detected_at_current_main": s_main["echoimage"]["detected"],
        "negative_score_quantiles": neg["score_quantiles"],
    }
    cal["sweep"] = [
        {"threshold": t, "false_match_rate": rate(x >= t for x in neg_scores),
         "recall_main": rate(r.rank == 1 and r.top_score >= t for r in main),
         "recall_extra": rate(r.rank == 1 and r.top_score >= t for r in extra)}
        for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    if cal["zero_false_match_threshold"] is not None:
        z = cal["zero_false_match_threshold"]
        cal["recall_at_zero_false_match_main"] = rate(r.rank == 1 and r.top_score >= z
                                                      for r in main)
    result: dict[str, Any] = {
        "version": BENCH_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "command": list(command) if command is not None else list(sys.argv),
        "machine": machine,
        "params": {"photo_dir": str(photo_dir.resolve()), "out_dir": str(out_dir.resolve()),
                   "limit": limit, "seed": seed, "scale": list(scale),
                   "seed_subset": list(seed_subset), "negatives_fraction": negatives_fraction,
                   "latency_queries": latency_queries, "query_jpeg_quality": QUERY_QUALITY,
                   "peers": peers,
                   "k": TOP_K,
                   "settings": settings.model_dump(mode="json", exclude={"database_url"})},
        "dataset": {"photos": len(files), "catalogue": len(catalogue),
                    "negatives": len(negatives), "indexed": len(ctx.url_ids),
                    "query_photos": len(ctx.query_photos),
                    "queries": len(recs), "transforms": len(transforms)},
        "build": build,
        "transforms": per_t,
        "summary": {"main": s_main, "extra": summarise_records(extra, thr)},
        "negatives": neg,
        "evidence": evidence_summary(recs + colour_recs, neg, peer_res, hard_res),
        "calibration": cal,
        "colour": colour_report(recs + colour_recs, transforms + recolour,
                                settings.colour_threshold, colour_failures),
        "latency": latency,
        "scale": scale_res,
        "baselines": {"phash": {**phash_latency, "threshold": PHASH_THRESHOLD,
                                "false_match_rate": neg["phash_false_match_rate"],
                                "recall_at_1_main": s_main["phash"]["recall_at_1"],
                                "recall_at_5_main": s_main["phash"]["recall_at_5"]},
                      "seed": seed_res},
        "peers": peer_res,
        "hard": hard_res,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "memory": {"self_peak_rss_mb": self_peak_rss_mb(),
                   "self_peak_rss_mb_before_scale": rss_before_scale,
                   "build_children": build["memory"]},
        "phases": {**ctx.phases, "total": round(time.perf_counter() - t_all, 2)},
        "notes": run_notes(pad_info, scale_res),
    }
    result = jsonable(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / "bench.md").write_text(render_markdown(result))
    log(f"done in {result['phases']['total']:.0f}s: {out_dir / 'bench.json'}, "
        f"{out_dir / 'bench.md'}")
    return result
