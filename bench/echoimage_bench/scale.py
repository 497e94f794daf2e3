"""The scale benchmark: real photos among derived padding at 100k and 1M entries.

`run_scale_benchmark(photo_dir, out_dir, scales=(100_000, 1_000_000))`:

1. **catalogue**: `photos` of the photo folder (seeded) are indexed as a folder catalogue;
   the rest are held out as negatives. The queries are made once: `query_photos` of the
   catalogue photos under every transform of the suite (whole-photo and part-of-photo
   ones), and the held-out photos under the negative transforms.
2. **the catalogue alone, then each scale**, smallest first, in one store: derived padding
   rows (`bench.derived`) are added up to the scale, then `echoimage index rebuild` runs in
   its own process (wall time, peak RSS); then a **serving process** (its own interpreter,
   as `echoimage serve` would be) loads the engine and answers every query: latency
   p50/p95 and stages of whole-photo and part-of-photo queries, recall@1 of the photos
   among the padding by transform, false matches on the negatives, and its memory (peak
   RSS; anonymous and file-backed RSS: large index parts are memory-mapped), beside the
   pHash baseline (nearest 64-bit pHash by a numpy Hamming scan of the same store, the
   imagehash/imagededup way) answered in the same process. The catalogue-alone run is the
   baseline the scales are compared with, in the same run. The queries are asked in a
   seeded shuffled order, so that whole-photo, part-of-photo and no-copy queries share
   the machine's drift over the run alike. The serving process also measures how crowded
   the IVF lists are that the no-copy queries' first votes scan (`list_crowding`):
   padding rows are not photos, and where the lists a photo's keypoints fall into hold
   more entries than the lists an entry sits in, the first vote search scans more than it
   would among photos.
3. store bytes (file size, feature bytes per image) and index bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from echoimage.fetch.local import path_url
from echoimage_bench.baselines import PHASH_THRESHOLD, hamming_topk
from echoimage_bench.context import Log, build_catalogue, list_photos, read_bgr, search_engine
from echoimage_bench.memory import rss_mb, status_kb
from echoimage_bench.metrics import TOP_K, percentile, rate
from echoimage_bench.transforms import (
    NEGATIVE_TRANSFORMS,
    TRANSFORMS,
    make_query,
    transform_rng,
)


def _mb(kb: int | None) -> float | None:
    return rss_mb(kb) if kb is not None else None


def make_queries(photos: list[Path], catalogue: Path, held_out: list[Path], out: Path,
                 n_photos: int, seed: int) -> list[dict[str, Any]]:
    """Write the queries as JPEG files under out: `n_photos` of the catalogue photos (seeded)
    under every transform, and the held-out photos under the negative transforms; their
    list (kind: whole, parts or negative; transform; truth URL)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x5CA1E])
    pick = sorted(rng.choice(len(photos), size=min(n_photos, len(photos)),
                             replace=False).tolist())
    queries = []
    for p in pick:
        img = read_bgr(photos[p])
        truth = path_url((catalogue / photos[p].name).resolve())
        for t in TRANSFORMS.values():
            name = f"{p:04d}-{t.name}.jpg"
            (out / name).write_bytes(make_query(img, t, transform_rng(seed, p, t.name)))
            queries.append({"file": name, "kind": "parts" if t.extra else "whole",
                            "transform": t.name, "truth": truth})
    for j, p in enumerate(held_out):
        img = read_bgr(p)
        for name in NEGATIVE_TRANSFORMS:
            t = TRANSFORMS[name]
            f = f"negative-{j:04d}-{name}.jpg"
            (out / f).write_bytes(make_query(img, t, transform_rng(seed, 1_000_000 + j, name)))
            queries.append({"file": f, "kind": "negative", "transform": name, "truth": None})
    return queries


def split_catalogue(photo_dir: str | Path, photos: int, negatives: int, seed: int,
                    catalogue: Path) -> tuple[list[Path], list[Path], Path]:
    """The benchmark's seeded split of the photos: `photos` for the catalogue (linked into
    the directory catalogue) and `negatives` held out; (catalogue photos, held out,
    catalogue)."""
    all_photos = list_photos(Path(photo_dir))
    rng = np.random.default_rng([seed, 0xCA7])
    order = rng.permutation(len(all_photos))
    cat_photos = [all_photos[i] for i in sorted(order[:photos].tolist())]
    held_out = [all_photos[i] for i in sorted(order[photos:photos + negatives].tolist())]
    catalogue.mkdir(parents=True)
    for p in cat_photos:
        os.symlink(p.resolve(), catalogue / p.name)
    return cat_photos, held_out, catalogue


def answer_queries(engine: Any, blobs: list[bytes], k: int, seed: int | None = None
                   ) -> list[dict[str, Any]]:
    """Each query's latency, top answer (URL, duplicate, score) and stage times, in the
    order of blobs. With a seed the queries are asked in a seeded shuffled order: the
    machine's speed drifts over a run, and asked in turn (copies first, the no-copy
    queries last) the kinds would each get a different part of the drift."""
    order = list(range(len(blobs)))
    if seed is not None:
        order = np.random.default_rng([seed, 0x0DE5]).permutation(len(blobs)).tolist()
    answers: list[dict[str, Any]] = [{} for _ in blobs]
    for i in order:
        data = blobs[i]
        t = time.perf_counter()
        res = engine.query_bytes(data, k=k)
        ms = (time.perf_counter() - t) * 1000
        top = res.matches[0] if res.matches else None
        answers[i] = {"ms": ms, "top": top.url if top else None,
                      "duplicate": bool(top and top.duplicate),
                      "score": top.score if top else 0.0, "stages": res.timings,
                      "rounds": getattr(res, "rounds", {})}
    return answers


def list_crowding(engine: Any, blobs: list[bytes]) -> dict[str, float] | None:
    """How crowded the IVF lists are that these queries' first votes scan: the entries a
    query's first vote search scans (median; the first vote_probe_descriptors keypoints of
    the whole query and of its mirror image, in the share of their lists the first votes
    probe: `probe_share_for`; content boxes and collage cells left out), the mean size of
    the lists probed, and that of the lists the stored entries sit in (FAISS's imbalance
    factor), both as multiples of the mean list. Among photos queried with photos the two
    are alike; None for a flat index."""
    import faiss

    from echoimage.index.parts import nearest_lists
    from echoimage.search.engine import _View, probe_share_for

    s = engine.settings
    snap = engine.live.current()
    ivf = [p.local for p in snap.parts.parts if isinstance(p.local, faiss.IndexBinaryIVF)]
    if snap.quantizer is None or not ivf or not blobs:
        return None
    sizes = np.zeros(ivf[0].nlist, np.float64)
    for index in ivf:
        sizes += [index.invlists.list_size(i) for i in range(index.nlist)]
    mean = sizes.mean()
    n = s.vote_probe_descriptors
    probed, scanned = [], []
    for data in blobs:
        gray = engine.decode(data).gray  # the whole query's view, as the cascade makes it
        view = _View(gray, (0, 0, gray.shape[1], gray.shape[0]), s, s.query_orb_features)
        rows = np.ascontiguousarray(np.concatenate([view.orb(False).descriptors[:n],
                                                    view.orb(True).descriptors[:n]]), np.uint8)
        lists = nearest_lists(snap.parts.assign(rows), probe_share_for(s, snap.size))[1]
        mine = sizes[lists[lists >= 0]]
        probed.append(mine)
        scanned.append(float(mine.sum()))
    every = np.concatenate(probed)
    return {"lists": int(len(sizes)), "mean_list": round(float(mean), 1),
            "scanned_p50": percentile(scanned, 50),
            "probed_x": round(float(every.mean() / mean), 2),
            "entry_x": round(float((sizes ** 2).sum() / sizes.sum() / mean), 2)}


def serve_probe(data_dir: Path, query_dir: Path, out: Path) -> None:
    """A serving process: load the engine, answer every query of query_dir/queries.json
    (EchoImage, then the pHash baseline), write latencies, answers and memory to out."""
    from echoimage.config import Settings
    from echoimage.features.decode import decode_image
    from echoimage.features.hashes import hash_input, phash
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    queries = json.loads((query_dir / "queries.json").read_text())
    settings = Settings(data_dir=data_dir)
    before = status_kb()
    t0 = time.perf_counter()
    engine = search_engine(settings, rebuild=False)
    load_s = time.perf_counter() - t0
    after_load = status_kb()
    blobs = [(query_dir / q["file"]).read_bytes() for q in queries]
    for data in blobs[:3]:  # warm-up: lazy imports, caches
        engine.query_bytes(data, k=TOP_K)
    answers = answer_queries(engine, blobs, TOP_K, seed=0)
    after_queries = status_kb()
    crowding = list_crowding(engine, [b for q, b in zip(queries, blobs, strict=True)
                                      if q["kind"] == "negative"])
    # the pHash baseline: every indexed image's pHash in memory, a numpy Hamming scan
    store = open_store(settings, create=False)
    t = time.perf_counter()
    with session_factory(store)() as session:
        ids, codes = repo.indexed_hashes(session)
    hash_load_s = time.perf_counter() - t
    urls: dict[int, str] = {}
    base = []
    for data in blobs:
        t = time.perf_counter()
        gray = decode_image(data, settings.max_pixels, settings.work_size).gray
        rows, dist = hamming_topk(phash(hash_input(gray)), codes, 1)
        ms = (time.perf_counter() - t) * 1000
        base.append({"ms": ms, "id": int(ids[rows[0]]), "dist": int(dist[0])})
    with session_factory(store)() as session:
        for b in base:
            if b["id"] not in urls:
                urls[b["id"]] = (repo.image_info(session, b["id"]) or {}).get("url", "")
    store.dispose()
    for b in base:
        b["top"] = urls[b["id"]]
    out.write_text(json.dumps({
        "entries": engine.size, "load_s": load_s, "answers": answers, "phash": base,
        "phash_load_s": hash_load_s, "lists": crowding,
        "memory_kb": {"before_load": before, "after_load": after_load,
                      "after_queries": after_queries, "end": status_kb()}}))


def answer_summary(queries: list[dict[str, Any]], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency, stages and recall of the serving probe's answers, for whole photos and for parts."""
    out: dict[str, Any] = {}
    for kind in ("whole", "parts"):
        sel = [(q, a) for q, a in zip(queries, answers, strict=True) if q["kind"] == kind]
        ms = [a["ms"] for _, a in sel]
        stages: dict[str, list[float]] = {}
        for _, a in sel:
            for k, v in a.get("stages", {}).items():
                stages.setdefault(k, []).append(v)
        by_t: dict[str, list[bool]] = {}
        for q, a in sel:
            by_t.setdefault(q["transform"], []).append(a["top"] == q["truth"])
        out[kind] = {"queries": len(sel),
                     "recall_at_1": rate(a["top"] == q["truth"] for q, a in sel),
                     "found_as_duplicate": rate(a["top"] == q["truth"] and a["duplicate"]
                                                for q, a in sel),
                     "ms_p50": percentile(ms, 50), "ms_p95": percentile(ms, 95),
                     "stage_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
                     "recall_at_1_by_transform": {k: rate(v) for k, v in by_t.items()}}
    neg = [a for q, a in zip(queries, answers, strict=True) if q["kind"] == "negative"]
    ms = [a["ms"] for a in neg]
    rounds: dict[str, list[float]] = {}
    for a in neg:
        for k, v in a.get("rounds", {}).items():
            rounds.setdefault(k, []).append(v)
    out["negatives"] = {"queries": len(neg),
                        "false_match_rate": rate(a["duplicate"] for a in neg),
                        "ms_p50": percentile(ms, 50), "ms_p95": percentile(ms, 95),
                        "rounds_ms_p50": {k: percentile(v, 50) for k, v in rounds.items()},
                        "rounds_ran": {k: len(v) / len(neg) for k, v in rounds.items()}}
    return out


def _phash_summary(queries: list[dict[str, Any]], base: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("whole", "parts"):
        sel = [(q, b) for q, b in zip(queries, base, strict=True) if q["kind"] == kind]
        ms = [b["ms"] for _, b in sel]
        out[kind] = {"recall_at_1": rate(b["top"] == q["truth"] for q, b in sel),
                     "found_within_threshold": rate(b["top"] == q["truth"]
                                                    and b["dist"] <= PHASH_THRESHOLD
                                                    for q, b in sel),
                     "ms_p50": percentile(ms, 50), "ms_p95": percentile(ms, 95)}
    neg = [b for q, b in zip(queries, base, strict=True) if q["kind"] == "negative"]
    out["negatives"] = {"false_match_rate": rate(b["dist"] <= PHASH_THRESHOLD for b in neg)}
    out["threshold_bits"] = PHASH_THRESHOLD
    return out


def _timed_child(cmd: list[str], what: str) -> tuple[float, float]:
    """Run a command and wait for it with wait4: (seconds, its own peak RSS in MB).
    RuntimeError with the end of its stderr if it fails."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    return time.perf_counter() - t0, rss_mb(usage.ru_maxrss)


def _dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


def run_scale_benchmark(photo_dir: str | Path, out_dir: str | Path, *,
                        scales: tuple[int, ...] = (100_000, 1_000_000), photos: int = 400,
                        query_photos: int = 100, negatives: int = 50, seed: int = 0,
                        keep: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the scale benchmark (see the module docstring) at the catalogue's own size
    (the baseline) and at each scale; results also in out_dir/scale.json. The padded store
    lives in out_dir/scale-data (removed at the end unless keep)."""
    from echoimage.config import Settings
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory
    from echoimage_bench.derived import add_derived_rows

    log = Log(progress, "bench scale")
    out_dir = Path(out_dir)
    work = out_dir / "scale-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cat_photos, held_out, catalogue = split_catalogue(photo_dir, photos, negatives, seed,
                                                      work / "catalogue")
    data = out_dir / "scale-data"
    shutil.rmtree(data, ignore_errors=True)
    settings = Settings(data_dir=data)
    t0 = time.perf_counter()
    summary = build_catalogue(settings, str(catalogue))
    build_s = time.perf_counter() - t0
    log(f"catalogue: {summary.counts.get('indexed', 0)} photos indexed in {build_s:.1f}s")
    qdir = work / "queries"
    queries = make_queries(cat_photos, catalogue, held_out, qdir, query_photos, seed)
    (qdir / "queries.json").write_text(json.dumps(queries))
    log(f"{len(queries)} queries written")
    result: dict[str, Any] = {
        "photos": len(cat_photos), "negatives": len(held_out), "seed": seed,
        "catalogue_build_s": round(build_s, 2), "cpus": os.cpu_count(),
        "settings": {k: getattr(settings, k) for k in (
            "orb_features", "thumb_quality", "local_per_image", "local_nprobe")},
        "scales": {}}
    engine = open_store(settings)
    have = len(cat_photos)
    try:
        for scale in [have, *sorted(s for s in scales if s > have)]:
            pad_s, rate_ = 0.0, None
            if scale > have:
                tick = log.loop(f"padding to {scale:,}", scale - have)
                pad_s = add_derived_rows(engine, have, scale - have, seed=seed,
                                         progress=lambda n, _t=tick: _t(n),
                                         workers=os.cpu_count() or 1)
                rate_ = round((scale - have) / pad_s)
                log(f"{scale:,}: padded in {pad_s:.0f}s ({rate_} rows/s); rebuilding the "
                    "index")
                have = scale
            with session_factory(engine)() as session:
                sizes = repo.storage_bytes(session)
            with engine.connect() as conn:  # the WAL into the file: its size is the store's
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            rebuild_s, rebuild_mb = _timed_child(
                [sys.executable, "-m", "echoimage", "--data-dir", str(data), "index",
                 "rebuild"], "index rebuild")
            log(f"{scale:,}: index rebuilt in {rebuild_s:.0f}s (peak RSS {rebuild_mb:.0f} MB);"
                " serving process answering the queries")
            probe_out = work / f"probe-{scale}.json"
            probe_s, probe_mb = _timed_child(
                [sys.executable, "-c", "import sys; from echoimage_bench.scale import "
                 "serve_probe; from pathlib import Path; serve_probe(Path(sys.argv[1]), "
                 "Path(sys.argv[2]), Path(sys.argv[3]))", str(data), str(qdir),
                 str(probe_out)], "serving process")
            probe = json.loads(probe_out.read_text())
            mem = probe["memory_kb"]
            res = {
                "entries": probe["entries"],
                "padding_s": round(pad_s, 1), "padding_rows_per_s": rate_,
                "index_rebuild_s": round(rebuild_s, 1), "index_rebuild_peak_rss_mb": rebuild_mb,
                "store_file_bytes": _dir_bytes(data, "echoimage.sqlite3*"),
                "store_bytes_per_image": round(_dir_bytes(data, "echoimage.sqlite3*")
                                               / probe["entries"]),
                "feature_bytes_per_image": sizes["features_per_image"],
                "index_file_bytes": _dir_bytes(settings.index_dir),
                "engine_load_s": round(probe["load_s"], 2),
                "ivf_lists": probe["lists"],
                "serving": {"peak_rss_mb": probe_mb,
                            "rss_mb": _mb(mem["end"].get("VmRSS")),
                            "rss_anon_mb": _mb(mem["end"].get("RssAnon")),
                            "rss_file_mb": _mb(mem["end"].get("RssFile")),
                            "rss_after_load_mb": _mb(mem["after_load"].get("VmRSS")),
                            "rss_anon_after_queries_mb": _mb(
                                mem["after_queries"].get("RssAnon")),
                            "seconds": round(probe_s, 1)},
                "echoimage": answer_summary(queries, probe["answers"]),
                "phash": {**_phash_summary(queries, probe["phash"]),
                          "load_s": round(probe["phash_load_s"], 2)},
            }
            result["scales"][str(scale)] = res
            e, p = res["echoimage"], res["phash"]
            log(f"{scale:,}: whole p50 {e['whole']['ms_p50']:.0f} ms, p95 "
                f"{e['whole']['ms_p95']:.0f} ms R@1 {e['whole']['recall_at_1']:.3f}; parts "
                f"p50 {e['parts']['ms_p50']:.0f} ms R@1 {e['parts']['recall_at_1']:.3f}; "
                f"FMR {e['negatives']['false_match_rate']:.3f}; pHash R@1 "
                f"{p['whole']['recall_at_1']:.3f}/{p['parts']['recall_at_1']:.3f}; serving "
                f"peak {probe_mb:.0f} MB")
            (out_dir / "scale.json").write_text(json.dumps(result, indent=2))
    finally:
        engine.dispose()
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
    return result


def render_scale_markdown(result: dict[str, Any]) -> str:
    """The table of a scale benchmark result (BENCHMARKS.md, "One million images")."""
    rows = ["| | " + " | ".join(f"{int(s):,}" for s in result["scales"]) + " |",
            "|---|" + "---:|" * len(result["scales"])]

    def row(label: str, get: Any) -> None:
        vals = []
        for r in result["scales"].values():
            try:
                v = get(r)
            except (KeyError, TypeError):
                v = None
            vals.append("—" if v is None else v)
        rows.append(f"| {label} | " + " | ".join(map(str, vals)) + " |")

    e = lambda k, m: lambda r: r["echoimage"][k][m]  # noqa: E731
    ph = lambda k, m: lambda r: r["phash"][k][m]  # noqa: E731
    row("whole-photo query p50 / p95 (ms)",
        lambda r: f"{e('whole', 'ms_p50')(r):.0f} / {e('whole', 'ms_p95')(r):.0f}")
    row("part-of-photo query p50 / p95 (ms)",
        lambda r: f"{e('parts', 'ms_p50')(r):.0f} / {e('parts', 'ms_p95')(r):.0f}")
    row("no-copy query p50 / p95 (ms; × whole-photo p50)",
        lambda r: f"{e('negatives', 'ms_p50')(r):.0f} / {e('negatives', 'ms_p95')(r):.0f} "
                  f"({e('negatives', 'ms_p50')(r) / e('whole', 'ms_p50')(r):.2f}×)")
    row("recall@1 whole photos (pHash)",
        lambda r: f"{e('whole', 'recall_at_1')(r):.3f} ({ph('whole', 'recall_at_1')(r):.3f})")
    row("recall@1 parts of photos (pHash)",
        lambda r: f"{e('parts', 'recall_at_1')(r):.3f} ({ph('parts', 'recall_at_1')(r):.3f})")
    first = next(iter(result["scales"].values()))

    def worst_drop(r: dict[str, Any]) -> str:
        drops = []
        for kind in ("whole", "parts"):
            base = first["echoimage"][kind]["recall_at_1_by_transform"]
            for t, v in r["echoimage"][kind]["recall_at_1_by_transform"].items():
                drops.append((base[t] - v, t))
        d, t = max(drops)
        return f"−{100 * d:.1f} points ({t})" if d > 0 else "none"

    row("largest recall@1 drop of a transform vs the catalogue alone", worst_drop)
    row("false matches on held-out photos (pHash ≤10 bits)",
        lambda r: f"{e('negatives', 'false_match_rate')(r):.3f} "
                  f"({ph('negatives', 'false_match_rate')(r):.3f})")
    row("stages p50, whole photos: features / shortlist / re-rank (ms)",
        lambda r: " / ".join(f"{e('whole', 'stage_ms_p50')(r).get(k, 0):.1f}"
                             for k in ("features_ms", "shortlist_ms", "rerank_ms")))
    row("no-copy queries' first votes: entries scanned p50; lists probed / lists entries "
        "sit in (× mean list)",
        lambda r: f"{r['ivf_lists']['scanned_p50']:,.0f}; {r['ivf_lists']['probed_x']:.2f}× / "
                  f"{r['ivf_lists']['entry_x']:.2f}×")
    row("padding (rows/s)", lambda r: r["padding_rows_per_s"])
    row("index rebuild (s; peak RSS MB)",
        lambda r: f"{r['index_rebuild_s']:.0f}; {r['index_rebuild_peak_rss_mb']:.0f}")
    row("store bytes per image (file; features)",
        lambda r: f"{r['store_bytes_per_image']:,}; {r['feature_bytes_per_image']:,}")
    row("store / index files (GB)", lambda r: f"{r['store_file_bytes'] / 1e9:.1f} / "
                                              f"{r['index_file_bytes'] / 1e9:.2f}")
    row("serving process: peak RSS / anonymous / file-backed (MB)",
        lambda r: f"{r['serving']['peak_rss_mb']:.0f} / {r['serving']['rss_anon_mb']:.0f} / "
                  f"{r['serving']['rss_file_mb']:.0f}")
    row("engine load (s)", lambda r: r["engine_load_s"])
    return "\n".join(rows)
