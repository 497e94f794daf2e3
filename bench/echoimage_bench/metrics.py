"""The benchmark's metrics: ranks, recall@k, rates, percentiles and the calibrated threshold
(small pure functions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

TARGET_FMR = 0.01


TOP_K = 5


def rank_of(truth: str, ranked: Sequence[str]) -> int | None:
    """1-based rank of truth among ranked results, or None when absent."""
    for i, r in enumerate(ranked, 1):
        if r == truth:
            return i
    return None


def recall_at_k(ranks: Sequence[int | None], k: int) -> float | None:
    """Fraction of queries whose truth is ranked <= k; None for no queries."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if not ranks:
        return None
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def rate(flags: Iterable[bool]) -> float | None:
    """Fraction of true flags; None for an empty sequence."""
    flags = list(flags)
    return sum(1 for f in flags if f) / len(flags) if flags else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation as numpy's default); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in 0..100")
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def quantiles(values: Sequence[float], qs: Sequence[float] = (0, 5, 50, 95, 100)
              ) -> dict[str, float] | None:
    """{"p5": ..., ...} of values (p0 is "min", p100 is "max"); None if empty."""
    if not len(values):
        return None
    out = {}
    for q in qs:
        key = "min" if q == 0 else "max" if q == 100 else f"p{q:g}"
        out[key] = round(float(percentile(values, q)), 4)  # type: ignore[arg-type]
    return out


def just_above(score: float, digits: int = 4) -> float:
    """The smallest multiple of 10**-digits strictly above score (a threshold that
    excludes it and survives rounding in the report)."""
    scale = 10 ** digits
    return math.floor(score * scale + 1e-6) / scale + 1 / scale


def threshold_at_fmr(negative_scores: Sequence[float], max_rate: float) -> float | None:
    """Lowest score threshold t (verdict: score >= t) with false-match rate <= max_rate.

    At most floor(max_rate * n) negatives may score >= t; t is `just_above` the first
    negative score that must be excluded. None without negatives.
    """
    if not 0 <= max_rate < 1:
        raise ValueError("max_rate must be in [0, 1)")
    if not len(negative_scores):
        return None
    desc = sorted((float(s) for s in negative_scores), reverse=True)
    allowed = math.floor(max_rate * len(desc) + 1e-9)
    if allowed >= len(desc):
        return 0.0
    return just_above(desc[allowed])
