"""Pure re-ranking: SSIM on thumbnails, ORB ratio-test matching, RANSAC geometry, how far
the geometric evidence spreads over the matched area, and how much of the catalogue
image's detail the aligned query shows flat (`missing_detail`).

What the evidence makes of a candidate (proof, score, verdict) is `search.evidence`'s,
for queries and de-duplication (`search.dedupe`) alike.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import faiss
import numpy as np

from echoimage.search.evidence import MODEL
from echoimage.types import OrbFeatures

MIN_MATCHES = MODEL.rule.min_inliers  # fewer matches can never be proof

#: `missing_detail`'s blocks: side in thumbnail pixels; a catalogue block has detail from
#: this standard deviation of its grey levels (after a Gaussian blur of sigma 1, which
#: forgives the transform a pixel or two), a query block is flat below FLAT (JPEG's own
#: noise on a plain surface); a flat block within CLIPPED levels of black or white tells
#: nothing (a copy whose levels were crushed there has lost its detail); fewer than
#: MIN_DETAIL blocks with detail cannot tell
DETAIL_BLOCK, DETAIL, FLAT, CLIPPED, MIN_DETAIL = 16, 6.0, 1.5, 24, 4

#: `interior`: an inlier is inside its hull when farther from the hull's outline than this
#: share of the hull's scale (the square root of its area)
INTERIOR_TOL = 0.05

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _blur(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return cv2.GaussianBlur(z, (11, 11), 1.5, dst=out, borderType=cv2.BORDER_REFLECT)


#: each thread's four scratch planes for `SsimReference.compare`, by shape: a fresh
#: 256x256 float32 array is 256 KB, which the allocator maps and unmaps on every use
#: (~60 us a plane where the arithmetic itself takes ~8)
_scratch = threading.local()


def _planes(shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    planes = getattr(_scratch, "planes", None)
    if planes is None or planes[0].shape != shape:
        planes = tuple(np.empty(shape, np.float32) for _ in range(4))
        _scratch.planes = planes
    return planes


class SsimReference:
    """One side of SSIM, precomputed: compare a query thumbnail with many candidates.

    Gaussian 11x11, sigma 1.5, float32; equals skimage.metrics.structural_similarity(
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255) to ~1e-5.
    """

    def __init__(self, a: np.ndarray) -> None:
        if a.ndim != 2:
            raise ValueError("SSIM needs a 2-D grayscale image")
        self.x = a.astype(np.float32)
        self.mx = _blur(self.x)
        self.mxx = self.mx * self.mx
        self.vx = _blur(self.x * self.x) - self.mxx

    def compare(self, b: np.ndarray) -> float:
        """Mean SSIM between the reference and b (same shape). The arithmetic runs in this
        thread's scratch planes, in the order of the formula (the same value as computed
        in fresh arrays)."""
        if b.shape != self.x.shape:
            raise ValueError(f"ssim needs same-size images, got {self.x.shape} and {b.shape}")
        y, my, t, u = _planes(self.x.shape)
        np.copyto(y, b, casting="unsafe")
        _blur(y, my)
        np.multiply(y, y, out=t)
        _blur(t, u)  # E[y²]
        np.multiply(my, my, out=t)  # myy
        np.subtract(u, t, out=u)  # vy
        np.add(self.mxx, t, out=t)
        np.add(t, _C1, out=t)  # mxx + myy + C1
        np.add(self.vx, u, out=u)
        np.add(u, _C2, out=u)  # vx + vy + C2
        np.multiply(t, u, out=t)  # den
        np.multiply(self.x, y, out=u)
        _blur(u, y)  # E[xy]
        np.multiply(self.mx, my, out=my)  # mxy
        np.subtract(y, my, out=y)  # cxy
        np.multiply(y, 2, out=y)
        np.add(y, _C2, out=y)
        np.multiply(my, 2, out=my)
        np.add(my, _C1, out=my)
        np.multiply(my, y, out=my)  # num
        np.divide(my, t, out=my)
        return float(my[5:-5, 5:-5].mean())  # skimage crops the filter half-width


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two same-size grayscale images (see SsimReference)."""
    return SsimReference(a).compare(b)


@dataclass(frozen=True)
class OrbMatch:
    """Result of matching query keypoints to a candidate's."""

    matches: int
    inliers: int
    homography: np.ndarray | None  # query working pixels → candidate working pixels
    pairs: np.ndarray | None = None  # float32 N×4: inlier (qx, qy, cx, cy), working pixels


def ratio_matches(query: np.ndarray, cand: np.ndarray, ratio: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Lowe's ratio test on the two nearest catalogue descriptors of each query descriptor
    (Hamming), then one query descriptor per catalogue descriptor (the nearest; ties: the
    first): (query rows, catalogue rows), in the order the catalogue rows were first
    matched. The k-NN search is FAISS's exact binary one (a 300×500 match: 0.25 ms, against
    2.2 ms for OpenCV's BFMatcher.knnMatch, the same neighbours up to ties)."""
    if len(query) < 1 or len(cand) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty
    index = faiss.IndexBinaryFlat(cand.shape[1] * 8)
    index.add(np.ascontiguousarray(cand))
    dist, nn = index.search(np.ascontiguousarray(query), 2)
    ok = np.flatnonzero((nn[:, 1] >= 0) & (dist[:, 0] < ratio * dist[:, 1]))
    rows, train, d = ok, nn[ok, 0].astype(np.int64), dist[ok, 0]
    if not len(rows):
        return rows, train
    # per catalogue row: the nearest query row (ties: the first), and where it first appeared
    by_train = np.lexsort((rows, d, train))
    t_sorted = train[by_train]
    starts = np.r_[True, t_sorted[1:] != t_sorted[:-1]]
    best = by_train[starts]  # grouped by catalogue row, ascending
    first_row = np.minimum.reduceat(rows[by_train], np.flatnonzero(starts))
    keep = best[np.argsort(first_row, kind="stable")]
    return rows[keep], train[keep]


def match_orb(query: OrbFeatures, cand: OrbFeatures, ratio: float, ransac_px: float
              ) -> OrbMatch:
    """k-NN (k=2) Hamming matching with Lowe's ratio test, one query keypoint per catalogue
    keypoint, then RANSAC (USAC) homography inliers; degenerate geometry counts as none."""
    if len(query) < 2 or len(cand) < 2:
        return OrbMatch(0, 0, None)
    q_rows, c_rows = ratio_matches(query.descriptors, cand.descriptors, ratio)
    if len(q_rows) < MIN_MATCHES:
        return OrbMatch(len(q_rows), 0, None)
    src = query.keypoints[q_rows, :2]
    dst = cand.keypoints[c_rows, :2]
    # RANSAC on an affine model (3-point samples): stable even when the matches cluster on
    # one object of a crop, where a 4-point homography overfits perspective
    affine, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC,
                                        ransacReprojThreshold=ransac_px, maxIters=1000,
                                        confidence=0.995)
    if affine is None or mask is None:
        return OrbMatch(len(q_rows), 0, None)
    keep = mask.ravel().astype(bool)
    inliers = int(keep.sum())
    src_in, dst_in = src[keep], dst[keep]
    h = np.vstack([affine, [0.0, 0.0, 1.0]])
    if inliers >= MIN_MATCHES:  # the homography of the inliers, where it is well posed
        hom, _ = cv2.findHomography(src_in, dst_in, 0)
        if hom is not None and _plausible(hom):
            h = hom
    if not (_plausible(h) and _spread(src_in, query.keypoints, dst_in, cand.keypoints)):
        return OrbMatch(len(q_rows), min(inliers, MIN_MATCHES - 1), None)
    pairs_in = np.hstack([src_in, dst_in]).astype(np.float32)
    return OrbMatch(len(q_rows), inliers, h, pairs_in)


def _plausible(h: np.ndarray) -> bool:
    """Reject degenerate transforms: collapsed or exploded scale, strong shear or
    anisotropy (beyond a 1:4 stretch), or strong perspective."""
    a = h[:2, :2]
    if not np.all(np.isfinite(h)):
        return False
    sv = np.linalg.svd(a, compute_uv=False)
    if sv[1] <= 1e-9 or sv[0] / sv[1] > 4.0 or not (1 / 16 <= float(np.sqrt(sv[0] * sv[1])) <= 16):
        return False
    return bool(abs(h[2, 0]) < 0.005 and abs(h[2, 1]) < 0.005)


def _spread(q_in: np.ndarray, q_all: np.ndarray, c_in: np.ndarray, c_all: np.ndarray) -> bool:
    """Inliers must span a real area, not a point or a line: in the query at least 5% of
    its keypoints' extent each way, in the catalogue image a box of at least 0.2% of its
    keypoints' extent."""
    if len(q_in) < MIN_MATCHES:
        return False
    q_span = np.ptp(q_in, axis=0)
    q_full = np.maximum(np.ptp(q_all[:, :2], axis=0), 1.0)
    c_span = np.ptp(c_in, axis=0)
    c_full = np.maximum(np.ptp(c_all[:, :2], axis=0), 1.0)
    return bool(np.all(q_span >= 0.05 * q_full)
                and c_span[0] * c_span[1] >= 0.002 * c_full[0] * c_full[1])


def spread(q_in: np.ndarray, h: np.ndarray, view_shape: tuple[int, int],
           cand_shape: tuple[float, float]) -> float:
    """How much of the matched area the inliers span: the area of their convex hull in the
    query view over the area the query view and the catalogue image share under the
    transform h (query view pixels → catalogue working pixels), in [0, 1]. 0 when the
    shared area cannot be told (a degenerate transform)."""
    if len(q_in) < 3:
        return 0.0
    vh, vw = view_shape
    cw, ch = cand_shape
    view = np.float32([[0, 0], [vw, 0], [vw, vh], [0, vh]])
    frame = np.float32([[0, 0], [cw, 0], [cw, ch], [0, ch]]).reshape(-1, 1, 2)
    try:
        back = cv2.perspectiveTransform(frame, np.linalg.inv(h)).reshape(-1, 2)
    except np.linalg.LinAlgError:
        return 0.0
    if not np.all(np.isfinite(back)):
        return 0.0
    shared, _ = cv2.intersectConvexConvex(view, np.ascontiguousarray(back, np.float32))
    if shared <= 1.0:
        return 0.0
    hull = cv2.contourArea(cv2.convexHull(np.ascontiguousarray(q_in, np.float32)))
    return float(min(1.0, hull / shared))


def interior(q_in: np.ndarray) -> float:
    """The share of the inliers inside their convex hull, farther than INTERIOR_TOL of the
    hull's scale from its outline. Inliers on one shape's silhouette (two products of one
    outline, a round tin, a box: their labels differ) all lie on the outline; a copy's lie
    over the picture (of the calibration's geometric copies at 400 entries, one in 1,508
    had none inside, over 6% of the match). NaN with fewer than 3 inliers or a hull of no
    area."""
    if len(q_in) < 3:
        return float("nan")
    outline = cv2.convexHull(np.ascontiguousarray(q_in, np.float32).reshape(-1, 1, 2))
    area = cv2.contourArea(outline)
    if len(outline) < 3 or area <= 0:
        return float("nan")
    pts = np.asarray(q_in, np.float64).reshape(-1, 2)
    hull = outline.reshape(-1, 2).astype(np.float64)
    # each point's distance to every edge's line, positive on the hull's side (the hull
    # is convex: a point's distance to its outline is the least of them)
    a, b = hull, np.roll(hull, -1, axis=0)
    edge = b - a
    length = np.maximum(np.hypot(edge[:, 0], edge[:, 1]), 1e-12)

    def side(p: np.ndarray) -> np.ndarray:
        return (edge[None, :, 0] * (p[:, None, 1] - a[None, :, 1])
                - edge[None, :, 1] * (p[:, None, 0] - a[None, :, 0])) / length[None, :]

    inward = np.sign(side(hull.mean(axis=0, keepdims=True)))
    depth = (side(pts) * inward).min(axis=1)
    return float(np.mean(depth > INTERIOR_TOL * np.sqrt(area)))


def missing_detail(view: np.ndarray, h: np.ndarray, thumb: np.ndarray,
                   cand_size: tuple[float, float]) -> float:
    """The share of the catalogue image's detail that the query shows flat: the query view
    (grayscale, the pixels h maps) aligned onto the catalogue thumbnail by h (view pixels →
    catalogue working pixels, whose frame is cand_size = (width, height)), then, over the
    thumbnail's DETAIL_BLOCK blocks inside the shared area that have detail, those where
    the query is flat. A copy hides detail only under an overlay of one colour (stickers
    hid at most 7.1% in the calibration's edits); different products of one shape sharing
    their outline (or a word of their labels) show plain surfaces where the other's label
    is. Where the query is flat near black or white (CLIPPED) it tells nothing: a copy
    whose levels were crushed has lost its detail there, and a black bar hides what it
    covers. NaN when fewer than MIN_DETAIL blocks can tell, or h is degenerate."""
    t = thumb.shape[0]
    n = t // DETAIL_BLOCK
    cw, ch = cand_size
    a = np.diag([t / cw, t / ch, 1.0]) @ h
    if n < 1 or not np.all(np.isfinite(a)):
        return float("nan")
    det = float(np.linalg.det(a[:2, :2]))
    if abs(det) < 1e-12:
        return float("nan")
    scale = float(np.sqrt(abs(det)))
    src = view
    while scale <= 0.5 and min(src.shape[:2]) >= 2:
        # halve first (Gaussian pyramid): warping alone would alias the query's fine
        # detail, and an area resize to the exact scale costs ten times as much
        smaller = cv2.pyrDown(src)
        a = a @ np.diag([src.shape[1] / smaller.shape[1], src.shape[0] / smaller.shape[0],
                         1.0])
        src, scale = smaller, scale * 2
    # the query's edge pixels continued outward: black there would bleed into the blocks
    # along its outline through the blur, and make them look detailed
    q = cv2.warpPerspective(src, a, (t, t), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    sh, sw = src.shape[:2]
    corners = np.float32([[0, 0], [sw, 0], [sw, sh], [0, sh]]).reshape(-1, 1, 2)
    outline = cv2.perspectiveTransform(corners, a).reshape(-1, 2)
    if not np.all(np.isfinite(outline)):
        return float("nan")
    inside = np.zeros((t, t), np.uint8)
    outline = np.clip(np.round(outline), -4 * t, 5 * t).astype(np.int32)
    cv2.fillConvexPoly(inside, outline, 255)
    side = n * DETAIL_BLOCK

    def mean_std(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each block's mean and standard deviation, after a blur of sigma 1."""
        x = cv2.GaussianBlur(img[:side, :side].astype(np.float32), (0, 0), 1.0)
        m = cv2.resize(x, (n, n), interpolation=cv2.INTER_AREA)  # exact block means
        m2 = cv2.resize(x * x, (n, n), interpolation=cv2.INTER_AREA)
        return m, np.sqrt(np.maximum(m2 - m * m, 0.0))

    whole = cv2.resize(inside[:side, :side], (n, n), interpolation=cv2.INTER_AREA) == 255
    q_mean, q_std = mean_std(q)
    flat = q_std < FLAT
    clipped = flat & ((q_mean <= CLIPPED) | (q_mean >= 255 - CLIPPED))
    detail = whole & (mean_std(thumb)[1] >= DETAIL) & ~clipped
    if int(detail.sum()) < MIN_DETAIL:
        return float("nan")
    return float((detail & flat).sum() / detail.sum())


def told_detail(om: OrbMatch, covered: float, view: np.ndarray, h: np.ndarray,
                thumb: np.ndarray, cand_size: tuple[float, float]) -> tuple[float, float]:
    """`missing_detail` and `interior` of a match, told only where they decide: where its
    inliers (spanning `covered`) would be proof by themselves; (NaN, NaN) elsewhere. h maps
    view pixels to the catalogue image's working pixels (see missing_detail)."""
    if om.pairs is None or not MODEL.rule.geometric(om.inliers, om.matches, covered):
        return float("nan"), float("nan")
    return missing_detail(view, h, thumb, cand_size), interior(om.pairs[:, :2])


def missing_under_hash(query_thumb: np.ndarray, thumb: np.ndarray) -> float:
    """`missing_detail` of two same-size thumbnails laid on each other as a hash aligns
    them (the query's turned to the orientation that matched): the share of the catalogue
    thumbnail's detail the query's shows flat."""
    t = float(thumb.shape[0])
    return missing_detail(query_thumb, np.eye(3), thumb, (t, t))


def region(h: np.ndarray, query_shape: tuple[int, int], cand_scale: float,
           cand_size: tuple[int, int]) -> list[list[float]]:
    """The query's outline mapped into the candidate's original pixel coordinates."""
    qh, qw = query_shape
    corners = np.float32([[0, 0], [qw, 0], [qw, qh], [0, qh]]).reshape(-1, 1, 2)
    pts = cv2.perspectiveTransform(corners, h).reshape(-1, 2) * cand_scale
    w, hgt = cand_size
    pts[:, 0] = np.clip(pts[:, 0], 0, w)
    pts[:, 1] = np.clip(pts[:, 1], 0, hgt)
    return [[round(float(x), 1), round(float(y), 1)] for x, y in pts]
