"""A SearchEngine that says what its cascade did for each query: which images it re-ranked,
every match it scored and in which round, and the state at its stop rule (the benchmarks'
window into the engine, for miss diagnoses, the evidence model's fit and the stop rule's
calibration)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trace:
    """What the cascade did for one query."""

    reranked: set[int] = field(default_factory=set)
    scored: list[tuple[str, Any]] = field(default_factory=list)  # (round, Match)
    score_ms: list[float] = field(default_factory=list)  # the time of each of scored
    #: at the stop rule (after the first votes, no copy yet): the most votes one image got
    #: from one group; each candidate's inliers and pHash distance; None when it was not
    #: reached
    stop_votes: int | None = None
    stop: dict[int, tuple[int, int]] | None = None

    def best(self) -> dict[int, tuple[str, Any]]:
        """Per image: the round it was first called a copy in (or the round of its best
        match, when never), and its best match."""
        from echoimage.search.engine import _strength

        out: dict[int, tuple[str, Any]] = {}
        first: dict[int, str] = {}
        for rnd, m in self.scored:
            if m.duplicate and m.id not in first:
                first[m.id] = rnd
            if m.id not in out or _strength(m) > _strength(out[m.id][1]):
                out[m.id] = (rnd, m)
        return {i: (first.get(i, rnd), m) for i, (rnd, m) in out.items()}


def traced_engine(settings: Any) -> Any:
    """A SearchEngine whose `.trace` holds the Trace of its last query (set a new one with
    `ask`)."""
    from echoimage.search.engine import SearchEngine
    from echoimage.store.db import open_store

    class _Traced(SearchEngine):
        trace: Trace

        def _best(self, q: Any, props: Any, cand: Any, *args: Any, **kwargs: Any) -> Any:
            self.trace.reranked.add(cand.id)
            return super()._best(q, props, cand, *args, **kwargs)

        def _score(self, q: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            m = super()._score(q, *args, **kwargs)
            self.trace.score_ms.append((time.perf_counter() - t0) * 1000)
            self.trace.scored.append((q.round, m))
            return m

        def _plausible(self, q: Any) -> bool:
            self.trace.stop_votes = max(q.votes.values(), default=0)
            self.trace.stop = {i: (m.orb_inliers, m.hash_distance) for i, m in q.best.items()}
            return super()._plausible(q)

    engine = _Traced(settings, open_store(settings, create=False))
    engine.trace = Trace()
    return engine


def ask(engine: Any, data: bytes, k: int, copies_only: bool = False) -> tuple[Any, float]:
    """Decode as query_bytes does and run query_image (for copies only, if said) with a
    fresh trace: (result, query_image ms)."""
    img = engine.decode(data)
    engine.trace = Trace()
    t0 = time.perf_counter()
    res = engine.query_image(img, k=k, sha256=hashlib.sha256(data).hexdigest(),
                             copies_only=copies_only)
    return res, (time.perf_counter() - t0) * 1000


def diagnose(engine: Any, data: bytes, truth: int) -> dict[str, Any]:
    """Why an original was never re-ranked, seen from outside the cascade: its pHash
    distance and rank among the whole query's hash neighbours (8 orientations), and the
    votes it gets, and its rank among the images voted for, from each group of keypoints
    the cascade searches with (the whole query's and its mirror's), from the smaller set a
    content box would take, and from a normalised view's. Never raises."""
    try:
        import numpy as np

        from echoimage.features.hashes import hash_input, oriented_phashes
        from echoimage.features.orb import mirror_features, orb_detect
        from echoimage.features.photometric import normalised
        from echoimage.index.local import LocalParams

        s = engine.settings
        img = engine.decode(data)
        parts = engine.live.snapshot().parts
        codes = np.frombuffer(b"".join(oriented_phashes(hash_input(img.gray))),
                              np.uint8).reshape(8, 8)
        hits = parts.search_hashes(codes, 10_000)
        best: dict[int, int] = {}
        for ids, dists in zip(hits.ids, hits.distances, strict=True):
            for i, d in zip(ids.tolist(), dists.tolist(), strict=True):
                best[i] = min(best.get(i, 64), d)
        d_truth = best.get(truth, 64)
        out: dict[str, Any] = {"hash_distance": d_truth,
                               "hash_rank": 1 + sum(1 for d in best.values() if d < d_truth)}
        for name, gray, n in (("whole", img.gray, s.query_orb_features),
                              ("box_set", img.gray, s.box_orb_features),
                              ("normalised", normalised(img.gray), s.query_orb_features)):
            feats, kps = orb_detect(gray, n)
            mirrored = mirror_features(gray, kps[:s.vote_rerank_descriptors], n)
            for mirror, f in ((False, feats), (True, mirrored)):
                voted = parts.vote(f.descriptors, LocalParams.from_settings(s), 10_000)
                got = next((v.votes for v in voted if v.id == truth), 0)
                rank = next((k for k, v in enumerate(voted, 1) if v.id == truth), None)
                out[f"votes_{name}{'_mirrored' if mirror else ''}"] = [got, rank]
        return out
    except Exception as exc:  # a diagnosis must never stop the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"}


def without_proof(res: Any) -> int:
    """Results called copies without proof (same bytes, a hash within 5 bits or
    geometric agreement): never any."""
    from echoimage.search.evidence import Evidence, Proof

    return sum(1 for m in res.matches
               if m.verdict.is_copy and Evidence.of(m).proof() is Proof.NONE)
