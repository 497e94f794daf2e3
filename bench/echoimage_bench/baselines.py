"""The baselines run beside EchoImage in the same process: 64-bit pHash nearest neighbour
(the imagehash / imagededup way) and the seed's brute-force SSIM + ORB + histogram score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from echoimage_bench.context import RunContext, catalogue_photo, end_phase
from echoimage_bench.metrics import TOP_K, percentile, rank_of, recall_at_k
from echoimage_bench.transforms import Transform, check_bgr, make_query, transform_rng

#: the pHash baseline's threshold: imagededup's default max_distance_threshold (10 bits), as
#: its users run it (EchoImage's own hash distances are in echoimage.config.Settings)
PHASH_THRESHOLD = 10


def hamming_topk(query: bytes, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and Hamming distances of the k codes nearest to query (ties by row)."""
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise ValueError("codes must be an N x B uint8 array")
    if len(query) != codes.shape[1]:
        raise ValueError(f"query has {len(query)} bytes, codes have {codes.shape[1]}")
    if k < 1:
        raise ValueError("k must be at least 1")
    q = np.frombuffer(query, np.uint8)
    dist = np.bitwise_count(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.int64)
    order = np.argsort(dist, kind="stable")[:k]
    return order, dist[order]


@dataclass(frozen=True)
class SeedScore:
    """The seed's similarity of two images and its three components."""

    score: float
    ssim: float
    orb_ratio: float
    hist: float


def seed_score(a: np.ndarray, b: np.ndarray, size: int = 256) -> SeedScore:
    """Echo-Image's brute-force score of query a against catalogue image b (BGR uint8).

    Both are resized to size x size colour; the score is the mean of SSIM (scikit-image,
    channel_axis), the ORB good-match ratio (FLANN LSH k=2, Lowe ratio 0.75, good matches /
    query keypoints) and the correlation of 8x8x8 colour histograms.
    """
    from skimage.metrics import structural_similarity

    check_bgr(a)
    check_bgr(b)
    x = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
    y = cv2.resize(b, (size, size), interpolation=cv2.INTER_AREA)
    sim = float(structural_similarity(x, y, channel_axis=2, data_range=255))
    orb = cv2.ORB_create()
    ka, da = orb.detectAndCompute(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), None)
    kb, db = orb.detectAndCompute(cv2.cvtColor(y, cv2.COLOR_BGR2GRAY), None)
    ratio = 0.0
    if da is not None and db is not None and len(da) >= 2 and len(db) >= 2:
        flann = cv2.FlannBasedMatcher(
            {"algorithm": 6, "table_number": 6, "key_size": 12, "multi_probe_level": 1},
            {"checks": 50})
        pairs = flann.knnMatch(da, db, k=2)
        good = sum(1 for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance)
        ratio = min(1.0, good / max(1, len(ka)))
    ranges = [0, 256, 0, 256, 0, 256]
    hx = cv2.calcHist([x], [0, 1, 2], None, [8, 8, 8], ranges)
    hy = cv2.calcHist([y], [0, 1, 2], None, [8, 8, 8], ranges)
    cv2.normalize(hx, hx)
    cv2.normalize(hy, hy)
    hist = float(cv2.compareHist(hx, hy, cv2.HISTCMP_CORREL))
    return SeedScore((sim + ratio + hist) / 3, sim, ratio, hist)


def load_hashes(ctx: RunContext) -> None:
    """Read every indexed image's pHash into ctx (the pHash baseline's index)."""
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(ctx.settings)
    with session_factory(engine)() as session:
        ctx.phash_ids, ctx.phash_codes = repo.indexed_hashes(session)
    engine.dispose()
    ctx.id_urls = {i: u for u, i in ctx.url_ids.items()}


def phash_query(ctx: RunContext, gray: np.ndarray, truth: str | None
                 ) -> tuple[int | None, int, int]:
    """pHash NN: (rank of truth in top-5, top-1 distance, distance to the truth)."""
    from echoimage.features.hashes import hash_input, phash

    q = phash(hash_input(gray))
    rows, dist = hamming_topk(q, ctx.phash_codes, TOP_K)
    ranked = [ctx.id_urls.get(int(ctx.phash_ids[r]), "") for r in rows]
    truth_dist = -1
    if truth is not None:
        tid = ctx.url_ids[truth]
        row = int(np.searchsorted(ctx.phash_ids, tid))
        x = np.bitwise_xor(ctx.phash_codes[row], np.frombuffer(q, np.uint8))
        truth_dist = int(np.bitwise_count(x).sum())
    rank = rank_of(truth, ranked) if truth is not None else None
    return rank, int(dist[0]) if len(dist) else 64, truth_dist


def seed_baseline(ctx: RunContext, transforms: list[Transform], subset: tuple[int, int]
                   ) -> dict[str, Any]:
    """The seed's brute force: every query against every image of a small catalogue subset."""
    t0 = time.perf_counter()
    n_cat, per_t = subset
    cat_idx = ctx.query_photos[:n_cat]
    if not cat_idx or per_t < 1:
        return {"skipped": True}
    blobs = {i: ctx.catalogue[i].read_bytes() for i in cat_idx}
    rng = np.random.default_rng([ctx.seed, 0x5EED])
    pair_ms: list[float] = []
    per: dict[str, dict[str, Any]] = {}
    tick = ctx.log.loop("seed baseline", len(transforms) * min(per_t, len(cat_idx)))
    done = 0
    for t in transforms:
        chosen = sorted(rng.choice(len(cat_idx), size=min(per_t, len(cat_idx)),
                                   replace=False).tolist())
        ranks = []
        for c in chosen:
            i = cat_idx[c]
            data = make_query(catalogue_photo(ctx, i), t, transform_rng(ctx.seed, i, t.name))
            q = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            scores = []
            for j in cat_idx:
                p0 = time.perf_counter()
                cand = cv2.imdecode(np.frombuffer(blobs[j], np.uint8), cv2.IMREAD_COLOR)
                sc = seed_score(q, cand).score
                pair_ms.append((time.perf_counter() - p0) * 1000)
                scores.append((-sc, j))
            scores.sort()
            ranks.append(rank_of(ctx.urls[i], [ctx.urls[j] for _, j in scores[:TOP_K]]))
            done += 1
            tick(done)
        per[t.name] = {"n": len(ranks), "recall_at_1": recall_at_k(ranks, 1),
                       "recall_at_5": recall_at_k(ranks, TOP_K)}
    for i in cat_idx:
        ctx.images.pop(i, None)
    ms = float(np.median(pair_ms)) if pair_ms else None
    end_phase(ctx, "seed_baseline", t0)
    return {
        "catalogue_images": len(cat_idx), "queries_per_transform": per_t,
        "pairs": len(pair_ms),
        "ms_per_catalogue_image_per_query": {"p50": ms, "mean": float(np.mean(pair_ms))},
        "extrapolated_s_per_query_at_1m": round(ms * 1e6 / 1000, 0) if ms else None,
        "note": "includes decoding each catalogue JPEG from memory, as the seed re-read "
                "every image per query (no network); resize to 256x256 colour, "
                "skimage SSIM + ORB/FLANN-LSH good-match ratio + 8x8x8 histogram "
                "correlation, averaged",
        "by_transform": per,
    }


def phash_baseline_latency(ctx: RunContext, sample: list[tuple[int, str, bytes]]
                           ) -> dict[str, Any]:
    """Latency of the pHash baseline on the sample, from the decoded image (hash, Hamming
    scan)."""
    from echoimage.features.decode import decode_image

    s = ctx.settings
    ms = []
    for _, _, data in sample:
        gray = decode_image(data, s.max_pixels, s.work_size).gray
        t0 = time.perf_counter()
        phash_query(ctx, gray, None)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"entries": int(len(ctx.phash_codes)), "query_ms_p50": percentile(ms, 50),
            "query_ms_p95": percentile(ms, 95),
            "note": "from the decoded image: 32x32 hash input, pHash, numpy Hamming scan, "
                    "top-5"}
