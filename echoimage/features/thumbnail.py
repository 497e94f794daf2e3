"""Fixed-size grayscale thumbnail for SSIM re-ranking."""

from __future__ import annotations

import cv2
import numpy as np


def thumbnail(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a grayscale image to size x size (aspect ignored, so stretches still align)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("thumbnail expects a 2-D uint8 grayscale array")
    if size < 8:
        raise ValueError("size must be at least 8")
    interp = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)
