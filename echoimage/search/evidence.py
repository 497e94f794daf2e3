"""The decision: what proves a copy, and how sure a result's score is.

A result is a copy only with **proof**, evidence that chance does not produce:

* the same bytes as the catalogue image (`exact`);
* a pHash within `ProofRule.near_hash` bits (of 64) in the orientation that matched, for
  a query that cannot show its own detail (`Evidence.hash_alone`: small, crushed or noisy;
  different products photographed alike hash within a few bits too) and, laid on the
  catalogue image as the hash aligns them, shows at most `ProofRule.max_missing` of its
  detail flat; for a query drowned in colour noise, the 256-bit fine hash of the two
  thumbnails within `ProofRule.fine_near` bits does as well;
* geometric agreement: keypoint matches that one RANSAC transform of a copy explains
  (scale, turn, mirror, crop; no collapse, strong shear or perspective), spread over the
  matched area rather than on a point or a line (`rerank.match_orb`; their hull at least
  `ProofRule.min_spread` of the area the two share), at least `ProofRule.min_inliers` of
  them and more the more matches there are to choose from, where the query, aligned by
  that transform, does not show flat what the catalogue image has detail in (at most
  `ProofRule.max_missing` of it: a sticker hides some; different products of one shape
  agree on their outline and differ in their labels), and, where they span a large share
  of it (`ProofRule.ring_spread`) with enough of them (`ProofRule.ring_inliers`), not
  all on the outline of their hull (a silhouette traced alone: `rerank.interior`).

On the benchmark's held-out photos (`scripts/bench_calibrate.py`) no unrelated candidate
reached any of the three. SSIM, a distant hash and the number of matches move the
confidence, never make a copy alone: two smooth unrelated photos reach SSIM 0.7.

`score` is the probability that a result is a copy given its evidence: a logistic model
over the features of `Evidence.features`, fitted by `scripts/bench_calibrate.py` on seeded copies
and held-out photos, with copies and non-copies weighted equally (a query that is a copy
as often as not). Its coefficients and the proof rule it was fitted with are the versioned
table `MODEL`. A result is a copy
when it has proof and its score reaches `Settings.duplicate_threshold`, which the same
command chooses for a stated false-match rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echoimage.types import Match

#: how the model's inputs are scaled (part of the features' definition):
#: SSIM counts as far as the hash supports it (see `Evidence.ssim_support`)
SSIM_FLOOR, SSIM_SPAN = 0.5, 0.4
SUPPORT_CEIL, SUPPORT_SPAN = 22.0, 6.0
#: hash closeness counts from this many bits down
HASH_REACH = 16.0


class Proof(StrEnum):
    """What proves a result a copy (NONE: nothing does)."""

    SAME_BYTES = "same bytes"
    GEOMETRY = "geometry"
    NEAR_HASH = "near hash"
    NONE = "none"


@dataclass(frozen=True)
class ProofRule:
    """What proves a copy besides the same bytes (part of the versioned MODEL table).

    Geometric proof: at least `min_inliers` RANSAC inliers, and at least `inlier_floor` +
    `inlier_per_match` × the ratio-test matches, since chance agreement grows with the
    matches (the form of Brown & Lowe's panorama test, n_i > 8 + 0.3 n_f; the constants in
    MODEL from scripts/bench_calibrate.py: unrelated candidates reached 8-10 inliers among
    11-34 matches, none on its line), their hull covering at least `min_spread` of the
    matched area (real copies down to 0.0127 in the calibration at 400 entries, 0.018 at
    100,000; different products photographed alike share a word of their labels, 0-0.01)
    unless `clustered_ratio` of the matches are inliers (a 40% crop of the scale benchmark:
    21 of 21 over 0.84%; the products' clustered ones at most 19 of 25), and the query
    aligned by their transform shows flat at most `max_missing` of the catalogue image's
    blocks with detail in the shared area (`rerank.missing_detail`; the calibration's
    copies at most 0.071, under stickers; product shots of one shape 0.04-0.8), and,
    where there are `ring_inliers` or more and their hull covers `ring_spread` of the
    matched area or more, not all of them on its outline (`rerank.interior`: products of
    one shape agree on their silhouette alone, 14-20 inliers over 13-35% of the match; of
    the calibration's geometric copies at 400 entries, one in 1,508 had no inlier inside
    its hull, 10 over 6%, and in `echoimage bench --limit 60` a copy under a near-white
    gamma had 10 so, over a larger share).
    A hash: within `near_hash` pHash bits (at a million images some unrelated image is
    within 8 bits of ~2% of queries; copies only the hash finds are within 2), for a query
    that cannot show its own detail (`Evidence.hash_alone`: different products
    photographed alike hash within 5 bits too) and does not show flat more than
    `max_missing` of the catalogue image's detail as the hash aligns the two (the
    calibration's copies at most 0.006). For a noisy query the 256-bit fine hash
    (`features.hashes.fine_hash`) within `fine_near` bits proves as a near pHash does
    (heavy-noise copies within 70; noisy held-out queries 94 or more from every
    candidate, at 400 and 100,000 entries).
    """

    min_inliers: int
    inlier_floor: float
    inlier_per_match: float
    near_hash: int
    #: the least share of the matched area the inliers' hull must cover (inliers on one
    #: word of a label are no proof that the picture is a copy)...
    min_spread: float = 0.0
    #: ...unless at least this share of the ratio-test matches are inliers (a crop of
    #: little texture: every match agrees; a word two labels share: the rest disagree)
    clustered_ratio: float = 1.0
    #: the most of the catalogue image's detail the aligned query may show flat (a copy
    #: hides detail only under an overlay of one colour)
    max_missing: float = 1.0
    #: a noisy query's 256-bit fine hash within this many bits proves a copy as a near
    #: pHash does (-1: never)
    fine_near: int = -1
    #: inliers whose hull covers at least this share of the matched area are proof only
    #: with one of them inside the hull, off its outline (`rerank.interior`): alone on
    #: the outline they trace a shape's silhouette, which different products share (over
    #: 1: never)...
    ring_spread: float = 2.0
    #: ...where there are at least this many of them (of a few, all may lie on the
    #: outline by chance: a copy under a near-white gamma had 10 so)
    ring_inliers: int = 0

    def geometric(self, inliers: int, matches: int, spread: float = 1.0,
                  missing: float = float("nan"), interior: float = float("nan")) -> bool:
        """Whether this many inliers among this many matches, their hull covering this
        share of the matched area, the query showing this share of the catalogue image's
        detail flat, this share of them inside their hull (NaN: not told), are geometric
        proof."""
        spread_enough = spread >= self.min_spread or inliers >= self.clustered_ratio * matches
        shown = not missing > self.max_missing
        outline = spread >= self.ring_spread and inliers >= self.ring_inliers and \
            interior == 0.0
        return spread_enough and shown and not outline and inliers >= max(
            self.min_inliers, self.inlier_floor + self.inlier_per_match * matches)


def ssim_counts(hash_distance: int) -> bool:
    """Whether SSIM can move the score of a candidate this far in pHash: if not, a
    re-ranker may leave it out and compute it only for display."""
    return hash_distance < SUPPORT_CEIL


#: names of the model's inputs, in the order of `Evidence.features`
FEATURES = ("proof", "log_inliers", "inlier_ratio", "spread", "ssim", "hash")


@dataclass(frozen=True)
class Evidence:
    """What a candidate's comparison with the query found."""

    exact: bool  # the same bytes
    inliers: int  # RANSAC inliers of a plausible transform, spread (else at most 7)
    matches: int  # ratio-test keypoint matches
    spread: float  # the inliers' hull over the matched area, 0..1
    ssim: float  # of the thumbnails in the matched orientation (NaN: not computed)
    hash_distance: int  # pHash bits (of 64) in that orientation
    # whether a near hash may prove a copy by itself: the query's view is too small,
    # crushed or noisy for its own detail to agree geometrically (Settings.hash_proof_*),
    # and does not show the catalogue image's detail flat where the hash lays it
    hash_alone: bool = True
    # the share of the catalogue image's detail the query shows flat, aligned by the
    # inliers' transform (or else as the hash aligns them) (rerank.missing_detail; NaN:
    # not told)
    missing: float = float("nan")
    # bits of the 256-bit fine hash apart (features.hashes.fine_hash), told for a noisy
    # query only (-1: not told)
    fine_distance: int = -1
    # the share of the inliers inside their hull, off its outline (rerank.interior; NaN:
    # not told)
    interior: float = float("nan")

    @classmethod
    def of(cls, m: Match) -> Evidence:
        """The evidence of a result."""
        return cls(m.exact, m.orb_inliers, m.orb_matches, m.spread, m.ssim, m.hash_distance,
                   m.hash_alone, m.missing, m.fine_distance, m.interior)

    def proof(self, rule: ProofRule | None = None) -> Proof:
        """The strongest proof among the evidence (by MODEL's rule unless given one)."""
        rule = rule or MODEL.rule
        if self.exact:
            return Proof.SAME_BYTES
        if rule.geometric(self.inliers, self.matches, self.spread, self.missing,
                          self.interior):
            return Proof.GEOMETRY
        if self.hash_alone and (self.near_hash(rule) or self.near_fine(rule)):
            return Proof.NEAR_HASH
        return Proof.NONE

    def near_fine(self, rule: ProofRule | None = None) -> bool:
        """Whether the fine hash (told for a noisy query) is within the rule's fine_near."""
        return 0 <= self.fine_distance <= (rule or MODEL.rule).fine_near

    def near_hash(self, rule: ProofRule | None = None) -> bool:
        """Whether the pHash is within the rule's near_hash bits (proof of a copy only where
        `hash_alone`)."""
        return 0 <= self.hash_distance <= (rule or MODEL.rule).near_hash

    def ssim_support(self) -> float:
        """SSIM mapped to [0, 1] (0.5 → 0, 0.9 → 1), times the hash's support (full up to
        16 bits, none from 22): smooth unrelated photos reach SSIM 0.7 with distant
        hashes."""
        if math.isnan(self.ssim):
            return 0.0
        s = min(1.0, max(0.0, (self.ssim - SSIM_FLOOR) / SSIM_SPAN))
        support = min(1.0, max(0.0, (SUPPORT_CEIL - self.hash_distance) / SUPPORT_SPAN))
        return s * support

    def features(self, rule: ProofRule | None = None) -> tuple[float, ...]:
        """The model's inputs (FEATURES): proof (0/1, by rule: MODEL's unless given),
        log(1 + inliers), inliers per ratio-test match, spread of the inliers over the
        matched area, SSIM with the hash's support, and hash closeness (1 at 0 bits, 0
        from HASH_REACH). A fine hash that proves a noisy query a copy counts in the hash
        closeness as a pHash scaled by near_hash / fine_near (its bound as the pHash's):
        noise moves the pHash of a copy 10-20 bits."""
        rule = rule or MODEL.rule
        d: float = self.hash_distance
        if self.hash_alone and self.near_fine(rule):  # the fine hash proves the copy
            fine = self.fine_distance * rule.near_hash / rule.fine_near \
                if rule.fine_near > 0 else 0.0
            d = fine if d < 0 else min(d, fine)
        return (0.0 if self.proof(rule) is Proof.NONE else 1.0, math.log1p(max(0, self.inliers)),
                self.inliers / self.matches if self.matches > 0 else 0.0,
                min(1.0, max(0.0, self.spread)), self.ssim_support(),
                max(0.0, HASH_REACH - d) / HASH_REACH if d >= 0 else 0.0)


@dataclass(frozen=True)
class ScoreModel:
    """A fitted logistic model of the evidence: P(copy) = 1 / (1 + exp(-(b + w · x)))."""

    version: str
    #: what proves a copy; the model's first input, so fitted with it
    rule: ProofRule
    weights: tuple[float, ...]  # one per FEATURES
    intercept: float
    #: how it was fitted: command, date, copies and non-copies, the false-match rate
    #: duplicate_threshold was chosen for
    fitted: str

    def probability(self, x: tuple[float, ...]) -> float:
        """P(copy | evidence x) under equal priors."""
        if len(x) != len(self.weights):
            raise ValueError(f"the model takes {len(self.weights)} features, got {len(x)}")
        z = self.intercept + sum(w * v for w, v in zip(self.weights, x, strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


#: the model in use; rewritten by scripts/bench_calibrate.py --write
MODEL = ScoreModel(
    version='2026-12-07.7',
    rule=ProofRule(min_inliers=8, inlier_floor=6.0, inlier_per_match=0.2, near_hash=5,
                   min_spread=0.01, clustered_ratio=0.9, max_missing=0.1, fine_near=72,
                   ring_spread=0.1, ring_inliers=12),
    weights=(6.4443, 1.8128, 1.8738, 2.0317, 0.0087, 13.6968),
    intercept=-8.3292,
    fitted=(
        'bench_calibrate.py ../shared/datasets/bsds500 --out bench-out --limit 100 '
        '(2026-12-06; 5300 copy and 3200 non-copy queries, 5279 originals and 73232 other'
        ' candidates; threshold 0.5 for a false-match rate <= 0.001: 0.0000)'
        ' Version 2026-12-07.1: the same weights; a near hash proves a copy by itself only'
        ' for a small, crushed or noisy query (Settings.hash_proof_max_side, noisy_chroma),'
        ' and inliers are proof only spread over 1% of the matched area or more, or when'
        ' they are 90% of the matches. Version 2026-12-07.2: and only where the query,'
        ' aligned by their transform, shows at most 10% of the catalogue image\'s detail'
        ' flat. Version 2026-12-07.3: a near hash, too, only where the query, laid on the'
        ' catalogue image as the hash aligns them, shows at most 10% of its detail flat.'
        ' Version 2026-12-07.4: a noisy query\'s 256-bit fine hash within 72 bits proves a'
        ' copy as a near pHash does. Version 2026-12-07.5: and counts in the hash closeness'
        ' as a pHash of its distance times 5/72 (its bound as the pHash\'s). Version'
        ' 2026-12-07.6: inliers whose hull covers 10% of the matched area or more prove a'
        ' copy only with one of them inside the hull, off its outline. Version'
        ' 2026-12-07.7: that, only where there are 12 inliers or more'),
)


def score(ev: Evidence, model: ScoreModel = MODEL) -> float:
    """The probability that a result is a copy (1.0 for the same bytes)."""
    return 1.0 if ev.exact else model.probability(ev.features(model.rule))


def is_copy(ev: Evidence, score_value: float, threshold: float, model: ScoreModel = MODEL
            ) -> bool:
    """Proof (by the model's rule), and a score at the threshold."""
    return ev.exact or (ev.proof(model.rule) is not Proof.NONE and score_value >= threshold)


def why(ev: Evidence, copy: bool, mirror: bool = False) -> str:
    """A few words on why a result is a copy, or why it is not."""
    found = ev.proof()
    if found is Proof.SAME_BYTES:
        return "the same bytes"
    if found is Proof.GEOMETRY:
        where = f" over {round(100 * ev.spread)}% of the match" if ev.spread >= 0.01 else ""
        turned = " (mirrored)" if mirror else ""
        text = f"{ev.inliers} keypoints agree on one transform{turned}{where}"
        return text if copy else f"{text}, but the score is under the threshold"
    if found is Proof.NEAR_HASH:
        text = f"pHash {ev.hash_distance} bits apart" if ev.near_hash() else \
            f"256-bit hash {ev.fine_distance} bits apart (a noisy query)"
        return text if copy else f"{text}, but the score is under the threshold"
    agree = f"{ev.inliers} of {ev.matches} keypoint matches agree" if ev.matches else \
        "no keypoint matches"
    if ev.missing > MODEL.rule.max_missing and MODEL.rule.geometric(ev.inliers, ev.matches,
                                                                      ev.spread):
        return (f"no proof: {ev.inliers} keypoints agree on one transform, but the query shows"
                f" {round(100 * ev.missing)}% of the catalogue image's detail flat")
    if ev.interior == 0.0 and MODEL.rule.geometric(ev.inliers, ev.matches, ev.spread,
                                                   ev.missing):
        return (f"no proof: {ev.inliers} keypoints agree on one transform, but all on the"
                " outline of the shape they span (a silhouette two products can share)")
    if not ev.hash_alone and ev.near_hash():
        if ev.missing > MODEL.rule.max_missing:
            return (f"no proof: {agree}; pHash {ev.hash_distance} bits apart, but the query "
                    f"shows {round(100 * ev.missing)}% of the catalogue image's detail flat")
        return (f"no proof: {agree}; pHash {ev.hash_distance} bits apart, which proves a "
                "copy only of a small, crushed or noisy query")
    return f"no proof: {agree}, pHash {ev.hash_distance} bits apart"
