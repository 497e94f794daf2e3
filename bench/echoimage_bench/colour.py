"""The benchmark's colour figures: are recoloured copies still found, and does the
colour-sensitive verdict tell them from copies that keep their colours?

Pure functions of the sweep's records. A copy is called `recoloured` (colour-sensitive
mode, `search.verdict`) when it is found as a duplicate, is not the same bytes, and its
colour_distance passes the threshold: the same test is applied here to each query's top
result, at the configured threshold and over a sweep of thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from echoimage_bench.context import QueryRecord
from echoimage_bench.formatting import fmt_rate, markdown_table
from echoimage_bench.metrics import quantiles, rate, recall_at_k
from echoimage_bench.transforms import Transform

#: the share of same-colour copies the calibrated threshold may call recoloured
TARGET_FALSE_RECOLOURED = 0.01
#: thresholds the calibration tries (0.05, 0.06, ... 0.95)
_GRID = [round(0.05 + 0.01 * i, 2) for i in range(91)]


def called_recoloured(r: QueryRecord, threshold: float) -> bool:
    """Whether colour-sensitive mode calls this query's top result `recoloured` (it is the
    original, a duplicate, not the same bytes, and its colours are farther than
    threshold)."""
    return (r.rank == 1 and r.top_dup and not r.top_exact and r.top_colour is not None
            and r.top_colour > threshold)


def recoloured_rate(recs: Sequence[QueryRecord], threshold: float) -> float | None:
    """Share of the queries whose top result is called recoloured at threshold."""
    return rate(called_recoloured(r, threshold) for r in recs)


def calibrate(same: Sequence[QueryRecord], target: float = TARGET_FALSE_RECOLOURED
              ) -> float | None:
    """The lowest threshold on the grid at which at most `target` of the same-colour
    copies are called recoloured (None without any)."""
    if not same:
        return None
    return next((t for t in _GRID if (recoloured_rate(same, t) or 0.0) <= target), None)


def colour_report(recs: Sequence[QueryRecord], transforms: Sequence[Transform],
                  threshold: float, failures: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Per transform: recall, the share called recoloured at `threshold` and the colour
    distances of the top results; for the recolouring transforms against the others (as a
    whole photo, and as a part of it): the same at `threshold`, at the calibrated
    threshold, and over a sweep."""
    by_name = {t.name: t for t in transforms}
    groups: dict[str, list[QueryRecord]] = {"recoloured": [], "same_colour": [],
                                          "same_colour_parts": []}
    per: dict[str, Any] = {}
    for t in transforms:
        sub = [r for r in recs if r.transform == t.name]
        if not sub:
            continue
        per[t.name] = {
            "n": len(sub), "recolours": t.recolours, "extra": t.extra,
            "description": t.description,
            "recall_at_1": recall_at_k([r.rank for r in sub], 1),
            "detected": rate(r.rank == 1 and r.top_dup for r in sub),
            "called_recoloured": recoloured_rate(sub, threshold),
            "colour_distance": quantiles([r.top_colour for r in sub
                                          if r.rank == 1 and r.top_colour is not None]),
            "failures": (failures or {}).get(t.name),
        }
    for r in recs:
        t = by_name[r.transform]
        key = "recoloured" if t.recolours else "same_colour_parts" if t.extra else "same_colour"
        groups[key].append(r)
    calibrated = calibrate(groups["same_colour"] + groups["same_colour_parts"])
    summary = {
        name: {"n": len(sub), "recall_at_1": recall_at_k([r.rank for r in sub], 1),
               "called_recoloured": recoloured_rate(sub, threshold),
               "called_recoloured_at_calibrated": recoloured_rate(sub, calibrated)
               if calibrated is not None else None}
        for name, sub in groups.items()}
    sweep = [{"threshold": t, **{name: recoloured_rate(sub, t) for name, sub in groups.items()}}
             for t in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)]
    return {"threshold": threshold, "calibrated_threshold": calibrated,
            "target_false_recoloured": TARGET_FALSE_RECOLOURED, "groups": summary,
            "sweep": sweep, "by_transform": per}


def render_colour(colour: dict[str, Any]) -> list[str]:
    """The colour section of bench.md."""
    thr = colour["threshold"]
    rows = [[name + (" (recolours)" if r["recolours"] else " (extra)" if r["extra"] else ""),
             r["n"], fmt_rate(r["recall_at_1"]), fmt_rate(r["detected"]),
             fmt_rate(r["called_recoloured"]),
             fmt_rate((r["colour_distance"] or {}).get("p50")),
             fmt_rate((r["colour_distance"] or {}).get("p95"))]
            for name, r in colour["by_transform"].items()]
    g = colour["groups"]
    lines = ["", "## Colour", "",
             f"Top results called `recoloured` by colour-sensitive mode at colour_threshold "
             f"{thr:g} (a duplicate whose colour_distance exceeds it); colour distances of "
             "the correct top results.", "",
             markdown_table(["transform", "queries", "r@1", "detected", "called recoloured",
                             "colour dist p50", "p95"], rows), ""]
    for name, label in (("recoloured", "recolouring transforms"),
                        ("same_colour", "same-colour transforms (whole photo)"),
                        ("same_colour_parts", "same-colour transforms (parts)")):
        s = g[name]
        lines.append(f"- **{label}** ({s['n']} queries): r@1 {fmt_rate(s['recall_at_1'])}; "
                     f"called recoloured {fmt_rate(s['called_recoloured'])} at {thr:g}, "
                     f"{fmt_rate(s['called_recoloured_at_calibrated'])} at the calibrated "
                     f"{colour['calibrated_threshold']}")
    lines.append(f"- **Calibrated threshold** (lowest with at most "
                 f"{colour['target_false_recoloured']:.0%} of same-colour copies called "
                 f"recoloured): {colour['calibrated_threshold']}")
    return lines
