"""Colour signature of an image, and the distance between two signatures.

The signature is a soft histogram of the image's chroma in CIELAB: the hue angle of each
pixel (`HUE_BINS` sectors, each pixel shared between its two nearest sectors) in
`SAT_RINGS` rings of saturation, plus one bin for neutral (gray, white, black) pixels.
Saturation is chroma relative to lightness, C* / (L* + 16): scaling a photo's light by a
factor scales both by its cube root, so brightness and contrast changes leave it nearly
unchanged, as they leave hue. Positions are ignored, so crops, mirrors, rotations, scaling
and re-encoding keep the histogram close; a hue rotation, a channel swap or a recoloured
object moves mass between hue sectors, and a grayscale copy moves it all to the neutral
bin. The bins are stored as one byte each (proportions in 1/255).

`colour_distance` is the total-variation distance between the two histograms (half their
L1 distance: the fraction of the pixels whose colour would have to change), after
spreading each histogram's hue mass to the neighbouring sectors on both sides, so that a
small hue shift (white balance, JPEG) costs little. 0 is the same colours, 1 nothing alike.
"""

from __future__ import annotations

import cv2
import numpy as np

#: format byte at the start of every signature (bump when the bins change)
VERSION = 1
HUE_BINS = 16
#: lower edges of the saturation rings (C* / (L* + 16)); below the first: neutral. One
#: ring: a second (at 0.3) let brightening move mass between rings (bsds500: a x1.3 + 30
#: copy at 0.17 median distance instead of 0.11) and told recolourings apart no better
SAT_EDGES = (0.07,)
SAT_RINGS = len(SAT_EDGES)
#: how far a pixel's saturation reaches into the neutral bin (soft lower edge)
NEUTRAL_SOFT = 0.05
#: longest side the signature is computed at (the histogram hardly changes below)
SIGNATURE_SIZE = 64
SIGNATURE_BYTES = 1 + HUE_BINS * SAT_RINGS + 1
#: weights spreading hue mass over a sector and its neighbours before comparing
_SPREAD = np.array([0.25, 0.5, 0.25])


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3:
        raise ValueError("colour functions take an RGB uint8 HxWx3 array")
    if min(rgb.shape[:2]) < 1:
        raise ValueError("image has no pixels")


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """The chroma histogram of an RGB uint8 image: float64, HUE_BINS x SAT_RINGS hue bins
    (ring-major) then the neutral bin, summing to 1."""
    _check_rgb(rgb)
    longest = max(rgb.shape[:2])
    if longest > SIGNATURE_SIZE:
        f = SIGNATURE_SIZE / longest
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    light, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    sat = np.hypot(a, b) / (light + 16.0)
    hue = (np.arctan2(b, a) / (2 * np.pi)) % 1.0 * HUE_BINS
    lo = np.floor(hue - 0.5)  # soft hue: shared by the two nearest sector centres
    frac = hue - 0.5 - lo
    h0 = lo.astype(np.int64) % HUE_BINS
    h1 = (h0 + 1) % HUE_BINS
    # soft saturation: ramps of width NEUTRAL_SOFT at each ring's lower edge; a ring
    # takes what its ramp has and the next ring's does not, the neutral bin the rest
    ramps = [np.clip((sat - e) / NEUTRAL_SOFT + 0.5, 0.0, 1.0) for e in SAT_EDGES]
    ramps.append(np.zeros_like(sat))
    hist = np.zeros(HUE_BINS * SAT_RINGS + 1)
    for r in range(SAT_RINGS):
        w = ramps[r] - ramps[r + 1]
        hist += np.bincount(r * HUE_BINS + h0, w * (1 - frac), len(hist))
        hist += np.bincount(r * HUE_BINS + h1, w * frac, len(hist))
    hist[-1] = float(np.sum(1.0 - ramps[0]))
    total = hist.sum()
    return hist / total if total > 0 else hist


def colour_signature(rgb: np.ndarray) -> bytes:
    """The compact colour signature of an RGB uint8 image (SIGNATURE_BYTES bytes)."""
    hist = colour_histogram(rgb)
    q = np.round(hist * 255).clip(0, 255).astype(np.uint8)
    return bytes([VERSION]) + q.tobytes()


def signature_histogram(sig: bytes) -> np.ndarray:
    """The histogram a signature stores (renormalised after rounding)."""
    if len(sig) != SIGNATURE_BYTES or sig[0] != VERSION:
        raise ValueError(f"not a version-{VERSION} colour signature of {SIGNATURE_BYTES} bytes")
    h = np.frombuffer(sig, np.uint8, offset=1).astype(np.float64)
    total = h.sum()
    return h / total if total > 0 else h


def _spread(hist: np.ndarray) -> np.ndarray:
    """hist with each ring's hue mass spread over neighbouring sectors (circularly)."""
    rings = hist[:-1].reshape(SAT_RINGS, HUE_BINS)
    out = sum(w * np.roll(rings, s, axis=1) for w, s in zip(_SPREAD, (-1, 0, 1), strict=True))
    return np.concatenate([np.asarray(out).ravel(), hist[-1:]])


def histogram_distance(p: np.ndarray, q: np.ndarray, covered: float = 1.0) -> float:
    """Distance in [0, 1] of a copy's colour histogram p from an original's q, where the
    copy shows `covered` of the original's area (see colour_distance)."""
    if p.shape != q.shape:
        raise ValueError("colour histograms differ in shape")
    if not 0 < covered <= 1:
        raise ValueError("covered must be in (0, 1]")
    sp, sq = _spread(p), _spread(q)
    if covered >= 1:
        return float(np.clip(0.5 * np.abs(sp - sq).sum(), 0.0, 1.0))
    return float(np.clip(np.maximum(sp - sq / covered, 0.0).sum(), 0.0, 1.0))


def colour_distance(a: bytes, b: bytes, covered: float = 1.0) -> float:
    """Distance in [0, 1] of a copy's colour signature a from its original's b: 0 the same
    colours, 1 nothing alike. Raises ValueError for a malformed signature.

    For a whole copy (covered 1) it is the total-variation distance, symmetric. A copy of
    a part (`covered` of the original's area, as a match's covered_fraction) can hold at
    most covered^-1 times the original's share of any colour: only the copy's colour mass
    beyond that counts, so a crop of the sky is not a recolouring of a landscape.
    """
    return histogram_distance(signature_histogram(a), signature_histogram(b), covered)
