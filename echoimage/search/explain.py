"""Explaining a match: what the geometry between a query and a catalogue image says."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from echoimage.types import Candidate


def describe(h: np.ndarray, mirror: bool, reg: list[list[float]], cand: Candidate,
              query_scale: float) -> dict[str, Any]:
    """From a homography: scale (catalogue pixels per query pixel), rotation, mirror and
    the fraction of the catalogue image the query covers."""
    a = h[:2, :2]
    det = float(np.linalg.det(a))
    scale = math.sqrt(abs(det))
    rotation = math.degrees(math.atan2(a[1, 0], a[0, 0]))
    pts = np.array(reg, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    total = float(cand.width * cand.height) or 1.0
    return {"scale": round(scale * cand.work_scale / query_scale, 3),
            "rotation_deg": round(rotation, 1), "mirror": mirror,
            "covered_fraction": round(min(area / total, 1.0), 3)}
