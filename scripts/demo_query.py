"""Write a transformed copy of a catalogue image (mirror, crop, brighter, JPEG 60) for the demo."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    """Usage: demo_query.py OUT.jpg SOURCE.jpg"""
    out, src = Path(sys.argv[1]), Path(sys.argv[2])
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"cannot read {src}")
    h, w = img.shape[:2]
    img = cv2.flip(img, 1)[h // 12 : h - h // 12, w // 12 : w - w // 12]
    img = np.clip(img.astype(np.float32) * 1.15 + 10, 0, 255).astype(np.uint8)
    cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 60])
    print(f"query: {out} (mirrored, cropped, brighter, JPEG 60 copy of {src.name})")


if __name__ == "__main__":
    main()
