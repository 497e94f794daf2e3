"""Photometric extremes: a query whose contrast was crushed (a strong gamma to near white or
near black, haze, low light) or that is drowned in noise, and a normalised view of it.

ORB finds corners by brightness steps of 12 grey levels or more, so a photo squeezed into
a few dozen levels keeps few keypoints, and heavy noise makes most of them noise. The
normalised view stretches the brightness back over the whole range with local contrast
equalisation (CLAHE) and smooths the noise first; its pHash, keypoints and thumbnail
then meet the catalogue's again.
"""

from __future__ import annotations

import cv2
import numpy as np

#: a query whose middle 90% of grey levels spans fewer than this is low in contrast
LOW_CONTRAST = 80
#: a query whose estimated noise (standard deviation, grey levels) exceeds this is noisy
NOISY = 16.0
#: CLAHE's clip limit and tiles
CLAHE_CLIP = 3.0
CLAHE_TILES = 8
#: the noise a bilateral-free smoothing removes: a Gaussian of this sigma per unit of
#: estimated noise above NOISY (working pixels), at most MAX_SIGMA
SIGMA_PER_NOISE = 0.06
MAX_SIGMA = 2.5

_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def _check(gray: np.ndarray) -> None:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("photometric functions take a 2-D uint8 grayscale array")
    if min(gray.shape) < 3:
        raise ValueError("image too small")


def contrast(gray: np.ndarray) -> float:
    """The span of the middle 90% of grey levels (0..255)."""
    _check(gray)
    hist = np.bincount(gray.ravel(), minlength=256).cumsum()
    lo = int(np.searchsorted(hist, 0.05 * hist[-1]))
    hi = int(np.searchsorted(hist, 0.95 * hist[-1]))
    return float(hi - lo)


def noise_sigma(gray: np.ndarray) -> float:
    """Estimated standard deviation of additive noise (Immerkær's fast estimate: the mean
    absolute response to a Laplacian difference mask, which cancels smooth ramps)."""
    _check(gray)
    h, w = gray.shape
    resp = cv2.filter2D(gray.astype(np.float32), -1, _LAPLACE)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(resp).sum() / (6.0 * (w - 2) * (h - 2)))


def needs_normalising(gray: np.ndarray) -> bool:
    """True for a query low in contrast or noisy enough for a normalised view to help."""
    return contrast(gray) < LOW_CONTRAST or noise_sigma(gray) > NOISY


def normalised(gray: np.ndarray) -> np.ndarray:
    """gray smoothed in proportion to its noise, then equalised locally (CLAHE)."""
    _check(gray)
    sigma = min(MAX_SIGMA, SIGMA_PER_NOISE * max(0.0, noise_sigma(gray) - NOISY / 2))
    out = cv2.GaussianBlur(gray, (0, 0), sigma) if sigma >= 0.5 else gray
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES))
    return clahe.apply(np.ascontiguousarray(out))
