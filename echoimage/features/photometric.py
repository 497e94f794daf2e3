"""Crushed contrast: a query whose grey levels were squeezed into a few (a strong gamma to
near white or near black, haze, low light), and a normalised view of it.

ORB finds corners by brightness steps of 12 grey levels or more, so a photo squeezed into
a dozen levels keeps few keypoints, and its pHash drifts. Such a photo is told by the
entropy of its grey-level histogram: a photo uses most of the 256 levels (bsds500: 7.3
bits at the median, 4.9 at the 1st percentile), a copy under perception's gamma 0.01-0.02
uses a handful (2.6-3.0 bits at the median, 4.5 at most), and by the narrow span of its
levels. The normalised view equalises
the histogram: a monotonic change of the levels (gamma, a haze, a gain) is undone up to
its rounding, and ORB's comparisons of brightness and the hash's DCT signs meet the
catalogue's again (bsds500, gamma to near-white: 30 of 30 originals with geometric proof
after equalisation, 5 of 30 before).
"""

from __future__ import annotations

import cv2
import numpy as np


def _check(gray: np.ndarray) -> None:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("photometric functions take a 2-D uint8 grayscale array")
    if gray.size == 0:
        raise ValueError("image has no pixels")


def level_entropy(gray: np.ndarray) -> float:
    """The entropy (bits, 0..8) of the image's grey-level histogram."""
    _check(gray)
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / gray.size
    return float(-(p * np.log2(p)).sum())


def level_span(gray: np.ndarray) -> int:
    """How many grey levels the middle 90% of the pixels span."""
    _check(gray)
    cum = np.bincount(gray.ravel(), minlength=256).cumsum()
    return int(np.searchsorted(cum, 0.95 * cum[-1]) - np.searchsorted(cum, 0.05 * cum[-1]))


def needs_normalising(gray: np.ndarray, max_bits: float, max_span: int) -> bool:
    """True for a query whose grey levels are crushed into a few: the entropy of its
    histogram under max_bits and the middle 90% of its pixels spanning fewer than
    max_span levels (Settings.crushed_bits, crushed_span)."""
    return level_entropy(gray) < max_bits and level_span(gray) < max_span


def normalised(gray: np.ndarray) -> np.ndarray:
    """gray with its histogram equalised."""
    _check(gray)
    return cv2.equalizeHist(np.ascontiguousarray(gray))


def chroma_noise(rgb: np.ndarray) -> float:
    """How much colour noise an RGB image carries: the median absolute fine detail (what a
    Gaussian blur of sigma 3 takes away) of its red and blue channels minus its green.
    A photo's colour channels move together (bsds500 at 192 px: 1.0-5.0, 0 for a grey
    image); noise drawn per channel does not (perception's heavy noise: 21.6-47)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ValueError("chroma_noise takes an HxWx3 RGB array")
    c = rgb.astype(np.float32)
    fine = []
    for k in (0, 2):
        d = c[..., k] - c[..., 1]
        fine.append(np.abs(d - cv2.GaussianBlur(d, (0, 0), 3)).ravel())
    return float(np.median(np.concatenate(fine)))
