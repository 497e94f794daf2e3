"""ORB keypoints and descriptors."""

from __future__ import annotations

import cv2
import numpy as np

from echoimage.types import OrbFeatures

EMPTY_ORB = OrbFeatures(np.zeros((0, 5), np.float32), np.zeros((0, 32), np.uint8))


def orb_features(gray: np.ndarray, nfeatures: int = 500) -> OrbFeatures:
    """Up to nfeatures ORB keypoints, strongest first; an empty set for flat images."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("orb_features expects a 2-D uint8 grayscale array")
    if nfeatures < 1:
        raise ValueError("nfeatures must be positive")
    orb = cv2.ORB_create(nfeatures=nfeatures, fastThreshold=12, edgeThreshold=15,
                         patchSize=31)
    kps, desc = orb.detectAndCompute(gray, None)
    if desc is None or not kps:
        return EMPTY_ORB
    order = np.argsort([-k.response for k in kps], kind="stable")
    pts = np.array([(k.pt[0], k.pt[1], k.size, k.angle, k.response) for k in kps],
                   dtype=np.float32)[order]
    return OrbFeatures(np.ascontiguousarray(pts), np.ascontiguousarray(desc[order]))
