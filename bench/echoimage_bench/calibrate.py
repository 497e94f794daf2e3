"""Fitting the evidence model and calibrating the stop rule (`scripts/bench_calibrate.py`).

`run_calibration(photo_dir, out_dir, ...)` splits and indexes the photos as the other
benchmarks do (its own seed, 1 by default, so that the runs of `echoimage bench` and
`bench_hard.py`, seed 0, check the model on a split it was not fitted on), then queries

* **copies**: each query photo through every transform of the suites (the main suite with
  its colour variants, the hard edits, perception's transforms), and
* **non-copies**: each held-out photo through the suites' negative transforms (the main
  suite's six, every hard edit, every one of perception's),

with the full cascade (no stop rule) through a traced engine that records every candidate
it scored, in which round, and the state at the stop rule. From that:

1. **the model**: a logistic regression of copy / not copy, its weights non-negative, over
   the features
   of `echoimage.search.evidence.features`, each query's original against every other
   candidate of every query, the two classes weighted equally; its coefficients become the
   versioned table `MODEL` (`--write` rewrites it in place);
2. **the threshold**: the lowest of 0.5 (equal priors) and up that keeps the false-match
   rate of the non-copy queries (a proven candidate scoring at the threshold) within the
   target;
3. **a reliability check**: the model fitted on half the photos, its probabilities binned
   on the other half against the share of copies in each bin;
4. **the stop rule**: for each candidate rule (continue after the vote round when some
   image got V votes or some candidate I inliers), the copies it would have lost (found
   only by a later round) and the time it saves on non-copy queries;
5. **proof**: the number of copy verdicts without proof (same bytes, a hash within 5 bits or
   geometric agreement), which must be 0.

Writes ``calibrate.json``, ``calibrate.md`` and every query's record
(``calibrate-queries.json``).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from echoimage_bench.context import (
    Log,
    RunContext,
    catalogue_photo,
    end_phase,
    list_photos,
    machine_info,
    query_subset,
    read_bgr,
    split_photos,
    stored_photos,
)
from echoimage_bench.formatting import jsonable, markdown_table
from echoimage_bench.metrics import TOP_K, percentile, rate
from echoimage_bench.trace import ask, traced_engine, without_proof

CALIBRATE_VERSION = 1

#: the suites whose copies and non-copies the calibration queries
SUITES = ("main", "hard", "peers")

#: the rules tried: after the first votes the cascade goes on when some image got V votes
#: (stop_votes) or some candidate is promising: I inliers (stop_inliers) or a pHash within
#: H bits (stop_hash); the deep round takes the promising ones (None: never)
STOP_VOTES = (None, 4, 5, 6, 8, 10)
STOP_INLIERS = (None, 4, 5, 6, 7)
STOP_HASH = (None, 8, 10, 12, 14)
#: rounds after the stop rule
LATE_ROUNDS = ("more_votes", "deep")


@dataclass(frozen=True)
class Query:
    """One query of the calibration: its bytes and what it is."""

    suite: str
    transform: str
    photo: str
    truth: str | None  # the original's URL; None for a non-copy
    data: bytes


def suite_queries(ctx: RunContext, suites: Sequence[str], pool: list[np.ndarray],
                  names: list[str], held: list[Path], negatives: int
                  ) -> list[tuple[str, Callable[[], Iterator[Query]], int]]:
    """The copies and the non-copies of the suites, made lazily (seeded as the suites'
    own runners make them): (label, maker, how many) of each."""
    from echoimage_bench.hard import HARD_EDITS, make_hard_query
    from echoimage_bench.transforms import (
        NEGATIVE_TRANSFORMS,
        RECOLOUR_TRANSFORMS,
        TRANSFORMS,
        make_query,
        transform_rng,
    )

    main = [*TRANSFORMS.values(), *RECOLOUR_TRANSFORMS.values()]
    seed = ctx.seed

    def positives() -> Iterator[Query]:
        for i in ctx.query_photos:
            img, truth, name = catalogue_photo(ctx, i), ctx.urls[i], ctx.catalogue[i].name
            if "main" in suites:
                for t in main:
                    yield Query("main", t.name, name, truth,
                                make_query(img, t, transform_rng(seed, i, t.name)))
            if "hard" in suites:
                for e in HARD_EDITS.values():
                    yield Query("hard", e.name, name, truth, make_hard_query(
                        img, e, transform_rng(seed, i, e.name), pool))
            ctx.images.pop(i, None)

    def non_copies() -> Iterator[Query]:
        for j, img in enumerate(pool[:negatives]):
            others = pool[:j] + pool[j + 1:]
            if "main" in suites:
                for n in NEGATIVE_TRANSFORMS:
                    yield Query("main", n, names[j], None, make_query(
                        img, TRANSFORMS[n], transform_rng(seed, 1_000_000 + j, n)))
            if "hard" in suites:
                for e in HARD_EDITS.values():
                    yield Query("hard", e.name, names[j], None, make_hard_query(
                        img, e, transform_rng(seed, 1_000_000 + j, e.name), others))

    def peers() -> Iterator[Query]:
        from echoimage_bench.peer_suite import suite_queries as peer_queries
        from echoimage_bench.peer_transforms import PEER_TRANSFORMS

        for q in peer_queries(ctx, list(PEER_TRANSFORMS.values()), held[:negatives]):
            yield Query("peers", q.transform, q.photo, q.truth, q.data)

    n_pos = (len(main) if "main" in suites else 0) + (len(HARD_EDITS) if "hard" in suites
                                                      else 0)
    n_neg = (len(NEGATIVE_TRANSFORMS) if "main" in suites else 0) + \
        (len(HARD_EDITS) if "hard" in suites else 0)
    out = [("copies", positives, n_pos * len(ctx.query_photos)),
           ("non-copies", non_copies, n_neg * min(negatives, len(pool)))]
    if "peers" in suites:
        from echoimage_bench.peer_transforms import PEER_TRANSFORMS

        out.append(("peer suite", peers, len(PEER_TRANSFORMS)
                    * (len(ctx.query_photos) + min(negatives, len(held)))))
    return out


def _record(q: Query, truth_id: int | None, res: Any, trace: Any, ms: float
            ) -> dict[str, Any]:
    """What one query's calibration needs: per candidate its features, proof, the round it
    was first a copy in; the stop state; the rounds' times."""
    from echoimage.search import evidence

    cands = []
    voted_ms: dict[int, float] = {}
    deep_ms: dict[int, float] = {}
    for (rnd, m), took in zip(trace.scored, trace.score_ms, strict=True):
        if rnd in ("votes", "normalised") and m.votes:
            voted_ms[m.id] = voted_ms.get(m.id, 0.0) + took
        if rnd == "deep":
            deep_ms[m.id] = deep_ms.get(m.id, 0.0) + took
    stop = trace.stop or {}
    stop_votes = trace.stop_votes
    for i, (rnd, m) in trace.best().items():
        cands.append({
            "id": i, "truth": truth_id is not None and i == truth_id, "round": rnd,
            "copy": bool(m.duplicate), "score": m.score, "votes": m.votes,
            "inliers": m.orb_inliers, "hash": m.hash_distance,
            "voted_ms": voted_ms.get(i, 0.0), "deep_ms": deep_ms.get(i, 0.0),
            "at_stop": list(stop[i]) if i in stop else None,
            "matches": m.orb_matches, "proof": str(evidence.Evidence.of(m).proof()),
            "features": list(evidence.Evidence.of(m).features()),
            "missing": None if np.isnan(m.missing) else round(m.missing, 3),
            "interior": None if np.isnan(m.interior) else round(m.interior, 3),
            "spread": round(m.spread, 4), "fine": m.fine_distance})
    top = res.matches[0] if res.matches else None
    return {"suite": q.suite, "transform": q.transform, "photo": q.photo,
            "copy_query": q.truth is not None, "ms": ms, "rounds": dict(res.rounds),
            "stop_votes": stop_votes,
            "rank1": bool(top is not None and truth_id is not None and top.id == truth_id),
            "found": bool(top is not None and top.duplicate),
            "shown_without_proof": without_proof(res),
            "candidates": cands}


def _samples(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, fold) of every candidate: the originals of copy queries are
    copies, every other candidate is not; fold: the parity of the photo's position."""
    photos = sorted({r["photo"] for r in records})
    fold_of = {p: k % 2 for k, p in enumerate(photos)}
    x, y, f = [], [], []
    for r in records:
        for c in r["candidates"]:
            x.append(c["features"])
            y.append(1 if c["truth"] else 0)
            f.append(fold_of[r["photo"]])
    return np.array(x, np.float64), np.array(y), np.array(f)


def fit_model(x: np.ndarray, y: np.ndarray, c: float = 1.0
              ) -> tuple[tuple[float, ...], float]:
    """Logistic regression of y on x with the two classes weighted equally and every
    weight non-negative (more evidence never makes a copy less likely), L2-regularised as
    scikit-learn's is at C = c: (weights, intercept). Minimised with SciPy's L-BFGS-B
    (scikit-learn's logistic regression takes no bounds)."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    if len(set(y.tolist())) < 2:
        raise ValueError("the fit needs copies and non-copies")
    n, k = x.shape
    sample = np.where(y == 1, n / (2 * y.sum()), n / (2 * (n - y.sum())))
    sign = 2.0 * y - 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k]
        z = sign * (x @ w + b)
        value = -float(sample @ log_expit(z)) + 0.5 * float(w @ w) / c
        g = -sample * sign * expit(-z)
        return value, np.concatenate([x.T @ g + w / c, [g.sum()]])

    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * k + [(None, None)],
                   options={"maxiter": 10_000})
    return tuple(round(float(w), 4) for w in res.x[:k]), round(float(res.x[k]), 4)


def reliability(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> list[dict[str, Any]]:
    """The model fitted on one half of the photos, judged on the other (both ways): per
    bin of probability, the candidates, the copies among them and, with the classes
    weighted equally as in the fit, their share against the mean probability."""
    from echoimage.search.evidence import MODEL, ScoreModel

    edges = (0.0, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 1.0000001)
    rows = {k: [0, 0, 0.0, 0.0, 0.0] for k in range(len(edges) - 1)}
    for held in (0, 1):
        train, test = fold != held, fold == held
        if len(set(y[train].tolist())) < 2 or not test.any():
            continue
        w, b = fit_model(x[train], y[train])
        model = ScoreModel("check", MODEL.rule, w, b, "")
        p = np.array([model.probability(tuple(v)) for v in x[test]])
        yt = y[test]
        wpos = len(yt) / max(1, 2 * int(yt.sum()))
        wneg = len(yt) / max(1, 2 * int((1 - yt).sum()))
        for k in rows:
            sel = (p >= edges[k]) & (p < edges[k + 1])
            rows[k][0] += int(sel.sum())
            rows[k][1] += int(yt[sel].sum())
            rows[k][2] += float(p[sel].sum())
            rows[k][3] += float(yt[sel].sum() * wpos)
            rows[k][4] += float((1 - yt[sel]).sum() * wneg)
    out = []
    for k, (n, pos, psum, wp, wn) in rows.items():
        if n:
            out.append({"bin": [edges[k], min(1.0, edges[k + 1])], "candidates": n,
                        "copies": pos, "mean_probability": psum / n,
                        "weighted_share_of_copies": wp / (wp + wn) if wp + wn else None})
    return out


def _query_copy(r: dict[str, Any], model: Any, threshold: float) -> bool:
    """Whether a query's best candidate is a copy under model and threshold."""
    from echoimage.search.evidence import FEATURES

    proof = FEATURES.index("proof")
    return any(c["features"][proof] > 0 and model.probability(tuple(c["features"]))
               >= threshold for c in r["candidates"])


def choose_threshold(records: Sequence[dict[str, Any]], model: Any, target: float
                     ) -> dict[str, Any]:
    """The lowest threshold from 0.5 up whose false-match rate over the non-copy queries
    is within target, with the rates and the copies found at a few thresholds."""
    neg = [r for r in records if not r["copy_query"]]
    pos = [r for r in records if r["copy_query"]]
    from echoimage.search.evidence import FEATURES

    proof = FEATURES.index("proof")

    def truth_copy(r: dict[str, Any], t: float) -> bool:
        return any(c["truth"] and c["features"][proof] > 0
                   and model.probability(tuple(c["features"])) >= t
                   for c in r["candidates"])

    grid = [round(0.5 + 0.01 * k, 2) for k in range(50)]
    sweep = [{"threshold": t, "false_match_rate": rate(_query_copy(r, model, t) for r in neg),
              "copies_found": rate(truth_copy(r, t) for r in pos)}
             for t in grid]
    chosen = next((s for s in sweep if s["false_match_rate"] is not None
                   and s["false_match_rate"] <= target), sweep[-1])
    return {"target_false_match_rate": target, "threshold": chosen["threshold"],
            "false_match_rate": chosen["false_match_rate"],
            "copies_found": chosen["copies_found"], "non_copy_queries": len(neg),
            "copy_queries": len(pos),
            "sweep": [s for s in sweep if s["threshold"] in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95,
                                                               0.99)]}


def stop_rules(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rule of STOP_VOTES × STOP_INLIERS × STOP_HASH: the copies it would have lost
    (the original first a copy in a round after the stop rule when the rule would have
    stopped there, or in the deep round when it would not have been promising) and the
    non-copy queries' p50 time with it (less the rounds it would have skipped)."""
    pos = [r for r in records if r["copy_query"]]
    neg = [r for r in records if not r["copy_query"]]

    def promising(c: dict[str, Any], i: int | None, h: int | None) -> bool:
        inliers, near = c["at_stop"] or (0, 64)
        return (i is not None and inliers >= i) or (h is not None and near <= h)

    def goes_on(r: dict[str, Any], v: int | None, i: int | None, h: int | None) -> bool:
        return r["stop_votes"] is None or (v is not None and r["stop_votes"] >= v) or \
            any(promising(c, i, h) for c in r["candidates"])

    def lost(r: dict[str, Any], v: int | None, i: int | None, h: int | None) -> bool:
        t = next((c for c in r["candidates"] if c["truth"]), None)
        if t is None or not t["copy"] or t["round"] not in LATE_ROUNDS:
            return False
        return not goes_on(r, v, i, h) or (t["round"] == "deep" and not promising(t, i, h))

    def saved(r: dict[str, Any], v: int | None, i: int | None, h: int | None) -> float:
        if not goes_on(r, v, i, h):
            return sum(r["rounds"].get(k, 0.0) for k in LATE_ROUNDS)
        return sum(c["deep_ms"] for c in r["candidates"] if not promising(c, i, h))

    out = []
    for v in STOP_VOTES:
        for i in STOP_INLIERS:
            for h in STOP_HASH:
                gone = [r for r in pos if lost(r, v, i, h)]
                out.append({
                    "stop_votes": v, "stop_inliers": i, "stop_hash": h,
                    "copies_lost": len(gone),
                    "copies_lost_by_transform": _count(f"{r['suite']}/{r['transform']}"
                                                       for r in gone),
                    "non_copy_p50_ms": percentile([r["ms"] - saved(r, v, i, h) for r in neg],
                                                  50),
                    "non_copies_going_on": rate(r["stop_votes"] is not None
                                                and goes_on(r, v, i, h) for r in neg)})
    return out


def _count(keys: Iterator[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


def round_times(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where queries spend their time: per kind (copy / non-copy), the p50 total and, per
    round, how often it ran and its mean and p50 time when it did."""
    from echoimage.search.engine import ROUNDS

    out = {}
    for kind, sel in (("copies", [r for r in records if r["copy_query"]]),
                      ("non_copies", [r for r in records if not r["copy_query"]])):
        per = {}
        for rnd in ROUNDS:
            ms = [r["rounds"][rnd] for r in sel if rnd in r["rounds"]]
            per[rnd] = {"ran": rate(rnd in r["rounds"] for r in sel),
                        "mean_ms": float(np.mean(ms)) if ms else None,
                        "p50_ms": percentile(ms, 50),
                        "mean_share": float(np.sum(ms) / max(1e-9, sum(r["ms"] for r in sel)))}
        out[kind] = {"queries": len(sel), "p50_ms": percentile([r["ms"] for r in sel], 50),
                     "rounds": per}
    return out


def write_model(model: Any, path: Path | None = None) -> Path:
    """Rewrite the MODEL table of echoimage/search/evidence.py with model."""
    from echoimage.search import evidence

    target = Path(path or evidence.__file__)
    text = target.read_text()
    block = re.compile(r"^MODEL = ScoreModel\(\n.*?^\)\n", re.S | re.M)
    if not block.search(text):
        raise ValueError(f"no MODEL table in {target}")
    weights = ", ".join(repr(w) for w in model.weights)
    # the fit's description, in pieces short enough for a line each
    pieces = textwrap.wrap(model.fitted, 80, drop_whitespace=False) or [""]
    fitted = "\n".join(f"        {p!r}" for p in pieces)
    new = (f"MODEL = ScoreModel(\n    version={model.version!r},\n"
           f"    rule={model.rule!r},\n"
           f"    weights=({weights}),\n    intercept={model.intercept!r},\n"
           f"    fitted=(\n{fitted}),\n)\n")
    target.write_text(block.sub(lambda _: new, text, count=1))
    return target


def run_calibration(photo_dir: str | Path, out_dir: str | Path, *, limit: int | None = 100,
                    negatives: int | None = None, seed: int = 1,
                    suites: Sequence[str] = SUITES, target_fmr: float = 0.001,
                    negatives_fraction: float = 0.2, write: bool = False,
                    progress: bool = True, command: Sequence[str] | None = None,
                    data_dir: str | Path | None = None, copies_only: bool = False
                    ) -> dict[str, Any]:
    """Fit the evidence model, choose the threshold, calibrate the stop rule; write
    calibrate.json and calibrate.md (see the module docstring).

    Args:
        photo_dir: folder of photos (read, never copied).
        out_dir: where the run writes ``data/`` (a fresh store), ``calibrate.json`` and
            ``calibrate.md``.
        limit: catalogue photos queried as copies (a seeded subset); None: all.
        negatives: held-out photos queried as non-copies (None: all).
        seed: seeds the split, the subset and the edits (1: not the benchmarks' split).
        suites: which suites' transforms to use ("main", "hard", "peers": perception's
            transforms, the held-out photos through the same ones).
        target_fmr: the false-match rate the threshold is chosen for.
        write: rewrite the MODEL table in echoimage/search/evidence.py.
        progress: progress lines on stderr.
        command: the command line to record (default: sys.argv).
        data_dir: calibrate on this existing catalogue (a padded one, as the load and
            scan benchmarks leave) instead of indexing a new one: its photos are the
            photo_dir photos whose file names it holds, the rest are held out; it is only
            read. None: index the seeded split into out_dir/data.
        copies_only: query for copies only (`SearchEngine.query_image`'s copies_only: the
            hash round scores the neighbours nearer than chance only, nothing is scored
            to fill the answer).
    """
    from echoimage.config import Settings
    from echoimage.search.engine import stop_hash_for
    from echoimage.search.evidence import MODEL, ScoreModel
    from echoimage_bench.runner import build_phase

    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites: {', '.join(unknown)}")
    if not 0 < target_fmr < 1:
        raise ValueError("target_fmr must be in (0, 1)")
    photo_dir, out_dir = Path(photo_dir), Path(out_dir)
    log = Log(progress, "calibrate")
    started = datetime.now(UTC)
    t_all = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_photos(photo_dir)
    stored: dict[str, tuple[int, str]] = {}
    if data_dir is not None:
        stored = stored_photos(Path(data_dir))
        catalogue = [p for p in files if p.name in stored]
        held = [p for p in files if p.name not in stored]
        if not catalogue:
            raise ValueError(f"{data_dir} holds none of the photos of {photo_dir}")
    else:
        catalogue, held = split_photos(files, seed, negatives_fraction)
    loaded = [(p.name, img) for p in held if (img := read_bgr(p)) is not None]
    names, pool = [n for n, _ in loaded], [img for _, img in loaded]
    if "hard" in suites and len(pool) < 9:
        raise ValueError(f"{len(pool)} held-out photos; the hard edits need at least 9")
    # the full cascade (every candidate promising, so every rule can be judged)
    settings = Settings(data_dir=Path(data_dir) if data_dir is not None else out_dir / "data",
                        database_url=None, stop_votes=0, stop_inliers=0)
    ctx = RunContext(log=log, seed=seed, settings=settings, catalogue=catalogue,
                     urls=[str(p) for p in catalogue], url_ids={}, query_photos=[])
    log(f"{len(files)} photos: {len(catalogue)} catalogue, {len(pool)} held out")
    if data_dir is None:
        build_phase(ctx, out_dir, catalogue)
    else:  # the store's own URLs
        ctx.urls = [stored[p.name][1] for p in catalogue]
        ctx.url_ids = {stored[p.name][1]: stored[p.name][0] for p in catalogue}
    indexed = [i for i, u in enumerate(ctx.urls) if u in ctx.url_ids]
    if not indexed:
        raise ValueError("no catalogue photo could be indexed")
    ctx.query_photos = query_subset(indexed, seed, limit)
    n_neg = len(pool) if negatives is None else min(negatives, len(pool))
    engine = traced_engine(settings)
    engine_size = engine.size
    records: list[dict[str, Any]] = []
    try:
        for label, make, total in suite_queries(ctx, suites, pool, names, held, n_neg):
            t0 = time.perf_counter()
            tick = ctx.log.loop(label, total)
            for n, q in enumerate(make(), 1):
                res, ms = ask(engine, q.data, TOP_K, copies_only)
                truth = ctx.url_ids.get(q.truth) if q.truth else None
                records.append(_record(q, truth, res, engine.trace, ms))
                tick(n)
            end_phase(ctx, label.replace("-", "_"), t0)
    finally:
        engine.store.dispose()
    x, y, fold = _samples(records)
    weights, intercept = fit_model(x, y)
    pos, neg = [r for r in records if r["copy_query"]], [r for r in records
                                                         if not r["copy_query"]]
    date = started.date().isoformat()
    cmd = list(command) if command is not None else list(sys.argv)
    provisional = ScoreModel(f"{date}.1", MODEL.rule, weights, intercept, "")
    chosen = choose_threshold(records, provisional, target_fmr)
    model = ScoreModel(
        f"{date}.1", MODEL.rule, weights, intercept,
        f"{' '.join(Path(c).name if k == 0 else c for k, c in enumerate(cmd))} ({date}; "
        f"{len(pos)} copy and {len(neg)} non-copy queries, {int(y.sum())} originals and "
        f"{int((1 - y).sum())} other candidates; threshold {chosen['threshold']} for a "
        f"false-match rate <= {target_fmr:g}: {chosen['false_match_rate']:.4f})")
    result: dict[str, Any] = {
        "version": CALIBRATE_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "command": cmd,
        "machine": machine_info(),
        "params": {"photo_dir": str(photo_dir.resolve()), "limit": limit, "seed": seed,
                   "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
                   "negatives": n_neg, "suites": list(suites), "target_fmr": target_fmr,
                   "copies_only": copies_only},
        # the rule the engine applies at this catalogue's size (stop_hash: stop_hash_for)
        "settings": {**{k: getattr(Settings(), k) for k in ("stop_votes", "stop_inliers",
                                                            "duplicate_threshold")},
                     "stop_hash": stop_hash_for(Settings(), engine_size)},
        "dataset": {"photos": len(files), "catalogue": len(catalogue), "held_out": len(pool),
                    "entries": engine_size,
                    "query_photos": len(ctx.query_photos), "copy_queries": len(pos),
                    "non_copy_queries": len(neg), "candidates": len(y),
                    "originals": int(y.sum())},
        "model": {"version": model.version, "features": list(_feature_names()),
                  "weights": list(weights), "intercept": intercept, "fitted": model.fitted},
        "threshold": chosen,
        "reliability": reliability(x, y, fold),
        "stop_rules": stop_rules(records),
        "round_times": round_times(records),
        "copies_without_proof": sum(r["shown_without_proof"] for r in records),
        "recall": {"rank1": rate(r["rank1"] for r in pos),
                   "rank1_and_copy": rate(r["rank1"] and r["found"] for r in pos),
                   "by_transform": {k: rate(r["rank1"] and r["found"] for r in pos
                                           if f"{r['suite']}/{r['transform']}" == k)
                                    for k in sorted({f"{r['suite']}/{r['transform']}"
                                                     for r in pos})}},
        "false_match_rate": rate(r["found"] for r in neg),
        "phases": {**ctx.phases, "total": round(time.perf_counter() - t_all, 2)},
    }
    if write:
        result["written_to"] = str(write_model(model))
    result = jsonable(result)
    (out_dir / "calibrate.json").write_text(json.dumps(result, indent=2))
    (out_dir / "calibrate-queries.json").write_text(json.dumps(jsonable(records)))
    (out_dir / "calibrate.md").write_text(render_calibration_markdown(result))
    log(f"done in {result['phases']['total']:.0f}s: {out_dir / 'calibrate.md'}")
    return result


def _feature_names() -> tuple[str, ...]:
    from echoimage.search.evidence import FEATURES

    return FEATURES


def _rule_table(result: dict[str, Any], f: Callable[..., str]) -> list[str]:
    """The stop rules' table: those on the frontier (no other rule both loses no more
    copies and makes non-copies faster), and the setting's."""
    rules = result["stop_rules"]
    now = result["settings"]

    def is_now(r: dict[str, Any]) -> bool:
        return all(r[k] == now[k] for k in ("stop_votes", "stop_inliers", "stop_hash"))

    frontier = [r for r in rules if is_now(r) or not any(
        o["copies_lost"] <= r["copies_lost"] and o["non_copy_p50_ms"] < r["non_copy_p50_ms"]
        or o["copies_lost"] < r["copies_lost"] and o["non_copy_p50_ms"] <= r["non_copy_p50_ms"]
        for o in rules)]
    frontier.sort(key=lambda r: (r["copies_lost"], r["non_copy_p50_ms"]))

    def rule(v: Any) -> str:
        return "–" if v is None else str(v)

    return [markdown_table(
        ["V", "I", "H", "copies lost", "non-copies going on", "non-copy p50 ms", "lost"],
        [[rule(r["stop_votes"]) + (" (setting)" if is_now(r) else ""),
          rule(r["stop_inliers"]), rule(r["stop_hash"]), r["copies_lost"],
          f(r["non_copies_going_on"]), f(r["non_copy_p50_ms"], 1),
          ", ".join(f"{k} {n}" for k, n in r["copies_lost_by_transform"].items())]
         for r in frontier])]


def render_calibration_markdown(result: dict[str, Any]) -> str:
    """calibrate.md: the model, the threshold, the reliability, the stop rules, the rounds."""
    def f(v: Any, d: int = 3) -> str:
        return "–" if v is None else f"{v:.{d}f}" if isinstance(v, float) else str(v)

    m, t, d = result["model"], result["threshold"], result["dataset"]
    lines = [
        "# EchoImage evidence model and stop rule", "",
        f"{result['date']} · `{' '.join(result['command'])}`", "",
        f"{d['catalogue']} catalogue photos, {d['query_photos']} queried through every "
        f"transform ({d['copy_queries']} copy queries), {d['held_out']} held out "
        f"({d['non_copy_queries']} non-copy queries); {d['candidates']} candidates scored, "
        f"{d['originals']} of them originals."
        + (" Queries for copies only." if result["params"].get("copies_only") else ""), "",
        "## Model", "",
        markdown_table(["feature", "weight"],
                       [*zip(m["features"], [f(w, 4) for w in m["weights"]], strict=True),
                        ("intercept", f(m["intercept"], 4))]), "",
        f"Version `{m['version']}`. Threshold **{t['threshold']}** for a false-match rate "
        f"≤ {t['target_false_match_rate']}: {f(t['false_match_rate'], 4)} of "
        f"{t['non_copy_queries']} non-copy queries, originals found (proven, at the "
        f"threshold) {f(t['copies_found'], 4)}. Copy verdicts without proof: "
        f"**{result['copies_without_proof']}**.", "",
        markdown_table(["threshold", "false-match rate", "originals found"],
                       [[s["threshold"], f(s["false_match_rate"], 4), f(s["copies_found"], 4)]
                        for s in t["sweep"]]), "",
        "## Reliability (fitted on half the photos, judged on the other half)", "",
        markdown_table(["probability", "candidates", "originals", "mean probability",
                        "share of originals (classes weighted equally)"],
                       [[f"{r['bin'][0]:.2f}–{r['bin'][1]:.2f}", r["candidates"], r["copies"],
                         f(r["mean_probability"]), f(r["weighted_share_of_copies"])]
                        for r in result["reliability"]]), "",
        "## Stop rules", "",
        "After the first votes the cascade goes on when some image got V votes "
        "(`stop_votes`) or some candidate is promising: I inliers (`stop_inliers`) or a "
        "pHash within H bits (`stop_hash`, fewer in a large catalogue: the setting's H is "
        f"{result['settings']['stop_hash']} at {result['dataset']['entries']:,} entries); "
        "the deep round takes the promising ones. Copies "
        "lost: called copies by the full cascade, not with the rule. The rules on the "
        "frontier (none loses fewer copies and is faster) and the setting's; "
        "calibrate.json has every one.", "",
        *_rule_table(result, f), "",
        "## Where the time goes (full cascade)", ""]
    for kind, rt in result["round_times"].items():
        lines += [f"{kind}: {rt['queries']} queries, p50 {f(rt['p50_ms'], 1)} ms", "",
                  markdown_table(["round", "ran", "mean ms when it ran", "p50 ms",
                                  "share of the time"],
                                 [[k, f(v["ran"]), f(v["mean_ms"], 1), f(v["p50_ms"], 1),
                                   f(v["mean_share"])] for k, v in rt["rounds"].items()]), ""]
    rec = result["recall"]
    lines += ["## Recall (rank 1 and a copy)", "",
              f"All copy queries: {f(rec['rank1_and_copy'])} (rank 1: {f(rec['rank1'])}); "
              f"non-copy queries called copies: {f(result['false_match_rate'], 4)}.", "",
              markdown_table(["transform", "r@1 and copy"],
                             [[k, f(v)] for k, v in rec["by_transform"].items()]), ""]
    return "\n".join(lines)
