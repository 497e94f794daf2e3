"""The bundled sample catalogue: photos that ship with scikit-image, written at first use."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import skimage.data

# photos only: the synthetic test patterns (chessboard, colorwheel…) are not a catalogue
SAMPLE_NAMES = (
    "astronaut", "brick", "camera", "cat", "cell", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page",
    "retina", "rocket", "text", "horse", "clock", "motorcycle_left",
)


def _load(name: str) -> np.ndarray | None:
    if name == "motorcycle_left":
        fn = getattr(skimage.data, "stereo_motorcycle", None)
        return fn()[0] if fn else None
    fn = getattr(skimage.data, name, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a missing optional sample must not stop the demo
        return None


def ensure_sample(directory: Path) -> Path:
    """Write the sample photos into directory (once) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_NAMES:
        path = directory / f"{name}.jpg"
        if path.exists():
            continue
        img = _load(name)
        if img is None:
            continue
        if img.dtype != np.uint8:  # (the horse is a boolean mask: stretched as numbers)
            img = cv2.normalize(img.astype(np.float32), None, 0, 255,
                                cv2.NORM_MINMAX).astype(np.uint8)
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2BGR)
        tmp = path.with_suffix(".tmp.jpg")
        cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        tmp.replace(path)
    return directory
