"""Verdicts: what each result is to the query, from the evidence behind its score."""

from __future__ import annotations

from echoimage.config import Settings
from echoimage.types import Match, Verdict


def verdict(m: Match, settings: Settings, colour_sensitive: bool | None = None) -> Verdict:
    """exact (same bytes); different (not a copy: no proof, or a score under
    duplicate_threshold, see echoimage.search.evidence); recoloured (colour-sensitive
    only: colour_distance above colour_threshold); partial (the copy shows less than
    partial_below of the catalogue image's area); otherwise duplicate."""
    if m.exact:
        return Verdict.EXACT
    if not m.duplicate:
        return Verdict.DIFFERENT
    sensitive = settings.colour_sensitive if colour_sensitive is None else colour_sensitive
    if sensitive and m.colour_distance is not None \
            and m.colour_distance > settings.colour_threshold:
        return Verdict.RECOLOURED
    covered = (m.transform or {}).get("covered_fraction")
    if covered is not None and covered < settings.partial_below:
        return Verdict.PARTIAL
    return Verdict.DUPLICATE
