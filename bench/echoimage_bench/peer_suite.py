"""EchoImage side by side with its peers on the transforms of perception's benchmark.

`run_peer_suite` hashes the catalogue with every peer that is installed (`peers`), then
sends the same queries to EchoImage and to each peer: every queried catalogue photo under
every transform of `peer_transforms`, and every held-out photo under the same transforms
(the negatives: no copy is in the catalogue). A query is answered by each system in turn,
from the same JPEG bytes, and timed end to end (decode, features or hash, index search).

Recall@1 is the share of copies whose original comes first and is called a match: by
EchoImage's verdict, by a peer's documented threshold, and by each system's own threshold
that lets 1% of the negatives through (fitted on these negatives, so it flatters every
system alike). The false-match rate is the share of negatives whose first result is called
a match.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from echoimage_bench.context import RunContext, catalogue_photo, end_phase, read_bgr
from echoimage_bench.formatting import fmt_rate, markdown_table
from echoimage_bench.metrics import (
    TARGET_FMR,
    TOP_K,
    percentile,
    quantiles,
    rank_of,
    rate,
    threshold_at_fmr,
)
from echoimage_bench.peer_transforms import (
    PEER_QUERY_QUALITY,
    PEER_TRANSFORMS,
    PERCEPTION_NAMES,
)
from echoimage_bench.peers import Peer, PeerIndex, load_peers
from echoimage_bench.trace import without_proof
from echoimage_bench.transforms import Transform, make_query, transform_rng

ECHOIMAGE = "echoimage"


@dataclass
class _Answer:
    """One system's answer to one query: the rank of the original (None for negatives or
    when absent), the first result's score (EchoImage) or distance (a peer), whether the
    first result was called a match, and the time taken."""

    rank: int | None
    top: float
    match: bool
    ms: float
    without_proof: int = 0  # EchoImage: results called copies without proof (never any)


@dataclass
class _Query:
    transform: str
    photo: str
    positive: bool
    answers: dict[str, _Answer] = field(default_factory=dict)


def hamming_threshold_at_fmr(distances: list[int], max_rate: float) -> int:
    """The largest distance d (match: top-1 distance <= d) that calls at most
    floor(max_rate * n) of the negatives a match; -1 when even d = 0 calls more."""
    if not 0 <= max_rate < 1:
        raise ValueError("max_rate must be in [0, 1)")
    if not distances:
        raise ValueError("no negatives")
    allowed = int(np.floor(max_rate * len(distances) + 1e-9))
    ordered = sorted(distances)
    if allowed >= len(ordered):
        return ordered[-1]
    return ordered[allowed] - 1


def _ask_echoimage(engine: Any, data: bytes, truth: str | None) -> _Answer:
    t0 = time.perf_counter()
    res = engine.query_bytes(data, k=TOP_K)
    ms = (time.perf_counter() - t0) * 1000
    top = res.matches[0] if res.matches else None
    rank = rank_of(truth, [m.url for m in res.matches]) if truth is not None else None
    return _Answer(rank, top.score if top else 0.0, bool(top and top.verdict.is_copy), ms,
                   without_proof(res))


def _ask_peer(peer: Peer, index: PeerIndex, data: bytes, truth: str | None) -> _Answer:
    t0 = time.perf_counter()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("a benchmark query could not be decoded")
    found = index.search(peer.hash_bgr(img), TOP_K)
    ms = (time.perf_counter() - t0) * 1000
    top = found[0][1] if found else peer.bits
    rank = rank_of(truth, [k for k, _ in found]) if truth is not None else None
    return _Answer(rank, float(top), top <= peer.threshold, ms)


def _hash_catalogue(ctx: RunContext, peers: list[Peer]) -> tuple[dict[str, PeerIndex],
                                                           dict[str, dict[str, Any]]]:
    """Each peer's index of the indexed catalogue photos, and its hashing time."""
    indexes = {p.name: PeerIndex(p.bits) for p in peers}
    ms: dict[str, list[float]] = {p.name: [] for p in peers}
    for url in ctx.urls:
        if url not in ctx.url_ids:
            continue
        img = read_bgr(Path(url))
        if img is None:
            continue
        for p in peers:
            t0 = time.perf_counter()
            code = p.hash_bgr(img)
            ms[p.name].append((time.perf_counter() - t0) * 1000)
            indexes[p.name].add(url, code)
    build = {p.name: {"entries": len(indexes[p.name]),
                      "hash_ms_p50": percentile(ms[p.name], 50)} for p in peers}
    return indexes, build


def _ask_all(engine: Any, peers: list[Peer], indexes: dict[str, PeerIndex], q: _Query,
             data: bytes, truth: str | None) -> None:
    q.answers[ECHOIMAGE] = _ask_echoimage(engine, data, truth)
    for p in peers:
        q.answers[p.name] = _ask_peer(p, indexes[p.name], data, truth)


@dataclass(frozen=True)
class SuiteQuery:
    """One query of the peer suite: a copy of catalogue photo `truth` (a store URL), or,
    with truth None, a held-out photo under the same transform (a negative)."""

    transform: str
    photo: str
    truth: str | None
    data: bytes


def suite_queries(ctx: RunContext, transforms: list[Transform], negatives: list[Path]
                  ) -> Iterator[SuiteQuery]:
    """The suite's queries in order: every queried catalogue photo under every transform,
    then every held-out photo under the same transforms, each seeded by (seed, photo,
    transform) as the other suites are."""
    for i in ctx.query_photos:
        img = catalogue_photo(ctx, i)
        for t in transforms:
            yield SuiteQuery(t.name, ctx.catalogue[i].name, ctx.urls[i],
                             make_query(img, t, transform_rng(ctx.seed, i, t.name)))
        ctx.images.pop(i, None)
    for j, path in enumerate(negatives):
        img = read_bgr(path)
        if img is None:
            continue
        for t in transforms:
            yield SuiteQuery(t.name, path.name, None,
                             make_query(img, t, transform_rng(ctx.seed, 1_000_000 + j, t.name)))


def _sweep(ctx: RunContext, engine: Any, peers: list[Peer], indexes: dict[str, PeerIndex],
           transforms: list[Transform], negatives: list[Path]) -> list[_Query]:
    t0 = time.perf_counter()
    out: list[_Query] = []
    tick = ctx.log.loop("peer suite", (len(ctx.query_photos) + len(negatives))
                        * len(transforms))
    for sq in suite_queries(ctx, transforms, negatives):
        q = _Query(sq.transform, sq.photo, sq.truth is not None)
        _ask_all(engine, peers, indexes, q, sq.data, sq.truth)
        out.append(q)
        tick(len(out))
    end_phase(ctx, "peer_suite", t0)
    return out


def _method_report(name: str, queries: list[_Query], transforms: list[Transform],
                   peer: Peer | None) -> dict[str, Any]:
    """One system's recall per transform (its verdict and at 1% false matches), false
    matches and time per query."""
    pos = [q.answers[name] for q in queries if q.positive]
    neg = [q.answers[name] for q in queries if not q.positive]
    if peer is None:  # a score: match when score >= threshold
        thr: float | None = threshold_at_fmr([a.top for a in neg], TARGET_FMR) if neg else None

        def calibrated(a: _Answer) -> bool:
            return thr is not None and a.top >= thr
    else:  # a distance: match when distance <= threshold
        thr = hamming_threshold_at_fmr([int(a.top) for a in neg], TARGET_FMR) if neg else None

        def calibrated(a: _Answer) -> bool:
            return thr is not None and a.top <= thr

    def recall(sub: list[_Answer]) -> dict[str, float | None]:
        return {"recall_at_1": rate(a.rank == 1 for a in sub),
                "recall_at_1_match": rate(a.rank == 1 and a.match for a in sub),
                "recall_at_1_calibrated": rate(a.rank == 1 and calibrated(a) for a in sub)}

    by_t = {t.name: recall([q.answers[name] for q in queries
                            if q.positive and q.transform == t.name]) for t in transforms}
    neg_by_t = {t.name: {"false_match_rate": rate(q.answers[name].match for q in queries
                                                  if not q.positive
                                                  and q.transform == t.name)}
                for t in transforms}
    out: dict[str, Any] = {
        **recall(pos),
        "by_transform": by_t,
        "negatives_by_transform": neg_by_t,
        "false_match_rate": rate(a.match for a in neg),
        # the negatives' first results: scores (EchoImage) or distances (a peer)
        "negative_top_quantiles": quantiles([a.top for a in neg], (0, 1, 50, 99, 100)),
        "calibrated_threshold": thr,
        "false_match_rate_calibrated": rate(calibrated(a) for a in neg) if neg else None,
        "copy_query_ms": {"p50": percentile([a.ms for a in pos], 50),
                          "p95": percentile([a.ms for a in pos], 95)},
        "no_copy_query_ms": {"p50": percentile([a.ms for a in neg], 50),
                             "p95": percentile([a.ms for a in neg], 95)},
    }
    if peer is not None:
        out.update({"label": peer.label, "version": peer.version, "bits": peer.bits,
                    "documented_threshold": peer.threshold, "rule": peer.rule})
    else:
        out.update({"label": "EchoImage", "rule": "its verdict (not `different`)"})
    return out


def run_peer_suite(ctx: RunContext, engine: Any, negatives: list[Path],
                   peer_names: list[str] | None = None) -> dict[str, Any]:
    """EchoImage and every installed peer over perception's transforms: the same copies
    (`ctx.query_photos`) and the same held-out negatives. JSON-ready."""
    peers, skipped = load_peers(peer_names)
    for name, why in skipped.items():
        ctx.log(f"peer {name} skipped: {why}")
    t0 = time.perf_counter()
    indexes, build = _hash_catalogue(ctx, peers)
    end_phase(ctx, "peer_hashing", t0)
    transforms = list(PEER_TRANSFORMS.values())
    queries = _sweep(ctx, engine, peers, indexes, transforms, negatives)
    methods = {ECHOIMAGE: _method_report(ECHOIMAGE, queries, transforms, None)}
    for p in peers:
        methods[p.name] = {**_method_report(p.name, queries, transforms, p),
                           "catalogue": build[p.name]}
    misses = [{"transform": q.transform, "photo": q.photo,
               "rank": q.answers[ECHOIMAGE].rank, "score": round(q.answers[ECHOIMAGE].top, 4)}
              for q in queries if q.positive and not (q.answers[ECHOIMAGE].rank == 1
                                                       and q.answers[ECHOIMAGE].match)]
    false = [{"transform": q.transform, "photo": q.photo,
              "score": round(q.answers[ECHOIMAGE].top, 4)}
             for q in queries if not q.positive and q.answers[ECHOIMAGE].match]
    return {
        "transforms": {t.name: {"description": " ".join((t.fn.__doc__ or "").split()),
                                "perception_name": PERCEPTION_NAMES[t.name]}
                       for t in transforms},
        "query_jpeg_quality": PEER_QUERY_QUALITY,
        "copies": sum(q.positive for q in queries),
        "negatives": sum(not q.positive for q in queries),
        "target_false_match_rate": TARGET_FMR,
        "methods": methods,
        "skipped": skipped,
        "echoimage_misses": misses,
        "echoimage_false_matches": false,
        "echoimage_copies_without_proof": sum(q.answers[ECHOIMAGE].without_proof
                                              for q in queries),
    }


def _cell(r: dict[str, Any], key: str) -> str:
    return fmt_rate(r.get(key))


def render_peer_table(suite: dict[str, Any]) -> list[str]:
    """bench.md's side-by-side table: recall@1 per transform for each system at its
    verdict or documented threshold and at 1% false matches, then false matches, the
    thresholds and the time per copy and per no-copy query."""
    methods = suite["methods"]
    cols: list[tuple[str, str, str]] = []  # (header, method, recall key)
    for name, m in methods.items():
        rule = "verdict" if name == ECHOIMAGE else f"≤ {m['documented_threshold']}"
        cols.append((f"{m['label']} ({rule})", name, "recall_at_1_match"))
        cols.append((f"{m['label']} @1% FMR", name, "recall_at_1_calibrated"))
    n_by_t = suite["copies"] // max(1, len(suite["transforms"]))
    rows: list[list[Any]] = []
    for t in suite["transforms"]:
        rows.append([t, n_by_t] + [_cell(methods[m]["by_transform"][t], k) for _, m, k in cols])
    rows.append(["**all**", suite["copies"]] + [_cell(methods[m], k) for _, m, k in cols])

    def fmr(m: dict[str, Any], key: str) -> str:
        return fmt_rate(m.get(key))

    rows.append(["false-match rate", suite["negatives"]]
                + [fmr(methods[m], "false_match_rate" if k == "recall_at_1_match"
                       else "false_match_rate_calibrated") for _, m, k in cols])
    rows.append(["threshold", ""]
                + ["verdict" if k == "recall_at_1_match" and m == ECHOIMAGE
                   else str(methods[m]["documented_threshold"]) if k == "recall_at_1_match"
                   else _fmt_thr(methods[m]["calibrated_threshold"], m == ECHOIMAGE)
                   for _, m, k in cols])
    for label, key in (("ms per copy query (p50)", "copy_query_ms"),
                       ("ms per no-copy query (p50)", "no_copy_query_ms")):
        rows.append([label, ""] + [_fmt_ms(methods[m][key]["p50"]) for _, m, _ in cols])
    table = markdown_table(["transform", "queries", *[h for h, _, _ in cols]], rows)
    lines = [table, ""]
    if suite["skipped"]:
        lines.append("Peers skipped: " + "; ".join(f"{k}: {v}" for k, v in
                                                  suite["skipped"].items()))
        lines.append("")
    return lines


def _fmt_thr(t: float | None, score: bool) -> str:
    if t is None:
        return "—"
    return f"score ≥ {t:.4f}" if score else f"≤ {int(t)}"


def _fmt_ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def render_peer_section(suite: dict[str, Any]) -> list[str]:
    """bench.md's "Peers" section: what ran, the table, the transforms."""
    if not suite or suite.get("ran") is False:
        return ["", "## Peers", "", "- not run (--no-peers)"]
    peers = [m for n, m in suite["methods"].items() if n != ECHOIMAGE]
    lines = [
        "", "## Peers: perception's benchmark transforms", "",
        f"{suite['copies']} copies and {suite['negatives']} held-out negatives (the same "
        f"{len(suite['transforms'])} transforms), each a JPEG q{suite['query_jpeg_quality']}, "
        "answered by each system in turn from the same bytes; recall@1 = the original first "
        "and called a match. Peers: "
        + (", ".join(f"{m['label']} {m['version']} ({m['rule']}; FAISS IndexBinaryFlat over "
                     f"{m['catalogue']['entries']} catalogue hashes)" for m in peers)
           or "none installed")
        + ". The \"@1% FMR\" thresholds are fitted on these negatives; times are end to end "
        "from the JPEG bytes (decode, features or hash, index search).", "",
        *render_peer_table(suite),
        *[f"* **{n}**: {t['description']}" for n, t in suite["transforms"].items()],
    ]
    return lines
