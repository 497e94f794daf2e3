"""Rewrite tests/data/golden.json: pinned feature values of scikit-image's `camera` photo.

Run it only when a change to the feature code is meant to change the values, and say so in
the commit (every stored hash in every existing index changes with them):

    .venv/bin/python scripts/regenerate_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

from echoimage.features.hashes import dhash, hash_input, oriented_phashes, phash, to_hex
from echoimage.features.orb import orb_features
from echoimage.features.thumbnail import thumbnail

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden.json"


def golden_values() -> dict[str, Any]:
    """The pinned values, computed from the 512x512 uint8 `camera` array."""
    cam = np.ascontiguousarray(skimage.data.camera(), dtype=np.uint8)
    small = hash_input(cam)
    orb = orb_features(cam, 500)
    thumb = thumbnail(cam, 256)
    return {
        "image": "skimage.data.camera",
        "shape": list(cam.shape),
        "phash": to_hex(phash(small)),
        "dhash": to_hex(dhash(small)),
        "oriented_phashes": [to_hex(h) for h in oriented_phashes(small)],
        "orb_keypoints": len(orb),
        "orb_keypoints_100": len(orb_features(cam, 100)),
        "orb_keypoints_96px": len(orb_features(cv2.resize(cam, (96, 96),
                                                          interpolation=cv2.INTER_AREA), 500)),
        "thumbnail_mean": round(float(thumb.mean()), 4),
        "thumbnail_64_mean": round(float(thumbnail(cam, 64).mean()), 4),
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__},
    }


def main() -> int:
    """Write the golden file and print it."""
    values = golden_values()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(values, indent=2) + "\n")
    print(f"wrote {GOLDEN}")
    print(json.dumps(values, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
