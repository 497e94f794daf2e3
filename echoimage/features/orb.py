"""ORB keypoints and descriptors."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from echoimage.types import OrbFeatures

EMPTY_ORB = OrbFeatures(np.zeros((0, 5), np.float32), np.zeros((0, 32), np.uint8))


GRID = 4
#: OpenCV ORB's settings besides the keypoint count: a lower FAST threshold than OpenCV's
#: default (12 against 20) finds corners in low-contrast regions too, a narrower border
#: (15 against 31) nearer the image's edges; they cost ~25% more time than the defaults
ORB_PARAMS = {"fastThreshold": 12, "edgeThreshold": 15, "patchSize": 31}


def spread_order(pts: np.ndarray, shape: tuple[int, int], grid: int = GRID) -> np.ndarray:
    """Order keypoints so every prefix is spread over the image: the strongest of each
    grid cell first, then the second strongest of each, and so on.

    The local-feature index keeps a prefix of this order, so a crop anywhere in the
    image still finds some of its keypoints there.
    """
    if len(pts) == 0:
        return np.zeros(0, np.int64)
    h, w = shape
    cx = np.minimum((pts[:, 0] * grid / max(w, 1)).astype(np.int64), grid - 1)
    cy = np.minimum((pts[:, 1] * grid / max(h, 1)).astype(np.int64), grid - 1)
    cell = cy * grid + cx
    n = len(pts)
    by_strength = np.lexsort((np.arange(n), -pts[:, 4]))
    # group by cell, strongest first within each: a keypoint's rank is its distance from
    # the start of its group
    grouped = by_strength[np.argsort(cell[by_strength], kind="stable")]
    cells = cell[grouped]
    rank_in_cell = np.empty(n, np.int64)
    rank_in_cell[grouped] = np.arange(n) - np.searchsorted(cells, cells, side="left")
    # primary key: rank within its cell; then strength; then index (stable)
    return np.lexsort((np.arange(len(pts)), -pts[:, 4], rank_in_cell))


def keypoint_rows(kps: Sequence[cv2.KeyPoint]) -> np.ndarray:
    """OpenCV keypoints as float32 rows (x, y, size, angle, response): positions through
    OpenCV's own converter, the other columns one attribute at a time (a tuple of five
    attributes per keypoint costs six times as much at 1,500 keypoints)."""
    pts = np.empty((len(kps), 5), np.float32)
    pts[:, :2] = cv2.KeyPoint_convert(kps).reshape(-1, 2)
    pts[:, 2] = [k.size for k in kps]
    pts[:, 3] = [k.angle for k in kps]
    pts[:, 4] = [k.response for k in kps]
    return pts


def _orb(nfeatures: int) -> cv2.ORB:
    return cv2.ORB_create(nfeatures=nfeatures, **ORB_PARAMS)


def _check(gray: np.ndarray, nfeatures: int) -> None:
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("orb_features expects a 2-D uint8 grayscale array")
    if nfeatures < 1:
        raise ValueError("nfeatures must be positive")


def _spread_features(kps: Sequence[cv2.KeyPoint], desc: np.ndarray | None,
                     shape: tuple[int, int]) -> OrbFeatures:
    """Keypoints and descriptors as OrbFeatures, in spread_order()."""
    if desc is None or not kps:
        return EMPTY_ORB
    pts = keypoint_rows(kps)
    order = spread_order(pts, shape)
    return OrbFeatures(np.ascontiguousarray(pts[order]), np.ascontiguousarray(desc[order]))


def orb_detect(gray: np.ndarray, nfeatures: int
               ) -> tuple[OrbFeatures, tuple[cv2.KeyPoint, ...]]:
    """orb_features(), and the detected keypoints themselves in the same order (with their
    pyramid levels), from which mirror_features() computes the mirror image's."""
    _check(gray, nfeatures)
    kps, desc = _orb(nfeatures).detectAndCompute(gray, None)
    if desc is None or not kps:
        return EMPTY_ORB, ()
    pts = keypoint_rows(kps)
    order = spread_order(pts, gray.shape[:2])
    feats = OrbFeatures(np.ascontiguousarray(pts[order]), np.ascontiguousarray(desc[order]))
    return feats, tuple([kps[i] for i in order.tolist()])


def orb_features(gray: np.ndarray, nfeatures: int) -> OrbFeatures:
    """Up to nfeatures ORB keypoints in spread_order(); an empty set for flat images."""
    return orb_detect(gray, nfeatures)[0]


def mirror_features(gray: np.ndarray, keypoints: Sequence[cv2.KeyPoint],
                    nfeatures: int) -> OrbFeatures:
    """ORB of gray's mirror image from gray's own detection (orb_detect; pass a prefix of
    its keypoints for only those): the keypoints mirrored (x to width - 1 - x, angle to
    180 - angle, the same pyramid level), their descriptors computed on the mirrored
    pixels (ORB descriptors are not mirror-invariant; detection nearly is). A fraction of
    the cost of detecting again: no detection, descriptors only for the keypoints given."""
    _check(gray, nfeatures)
    if not keypoints:
        return EMPTY_ORB
    w = gray.shape[1]
    mirrored = [cv2.KeyPoint(w - 1 - k.pt[0], k.pt[1], k.size, (180.0 - k.angle) % 360.0,
                             k.response, k.octave, k.class_id) for k in keypoints]
    kps, desc = _orb(nfeatures).compute(np.ascontiguousarray(gray[:, ::-1]), mirrored)
    return _spread_features(kps, desc, gray.shape[:2])
