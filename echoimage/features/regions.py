"""Content boxes: where a picture sits inside a larger query (a border, a screenshot, a
caption or banner around it). Each box is searched as a query of its own."""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in the input's pixels


def _iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def content_boxes(gray: np.ndarray, max_boxes: int = 3, min_area: float = 0.04,
                  max_area: float = 0.85) -> list[Box]:
    """Up to max_boxes axis-aligned boxes of textured content, largest first.

    Boxes cover between min_area and max_area of the image (the whole image is the query
    itself and is not repeated here). Flat margins, solid borders and plain page
    backgrounds are what separates a box from its surroundings.
    """
    if gray.ndim != 2:
        raise ValueError("content_boxes expects a 2-D grayscale array")
    if not 0 < min_area < max_area <= 1:
        raise ValueError("need 0 < min_area < max_area <= 1")
    h, w = gray.shape
    f = min(1.0, 256 / max(h, w))
    small = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA) if f < 1 else gray
    sh, sw = small.shape
    k3 = np.ones((3, 3), np.uint8)
    grad = cv2.morphologyEx(small, cv2.MORPH_GRADIENT, k3)
    mask = (grad > 10).astype(np.uint8)
    ks = max(3, round(min(sh, sw) * 0.03)) | 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((ks, ks), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    total = float(sh * sw)
    found: list[Box] = []
    ys, xs = np.nonzero(mask)
    if len(xs):  # everything that is not margin
        found.append((int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1))
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1 if n > 1 else []
    for i in order:
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        found.append((x, y, bw, bh))
    boxes: list[Box] = []
    for x, y, bw, bh in found:
        frac = bw * bh / total
        if not (min_area <= frac <= max_area) or bw < 0.1 * sw or bh < 0.1 * sh:
            continue
        if max(bw / bh, bh / bw) > 4:
            continue
        m = 1.5 / f  # the gradient widens content by about a pixel of the small image
        x0, y0 = max(0, round(x / f + m)), max(0, round(y / f + m))
        x1, y1 = min(w, round((x + bw) / f - m)), min(h, round((y + bh) / f - m))
        if x1 - x0 < 16 or y1 - y0 < 16:
            continue
        box = (x0, y0, x1 - x0, y1 - y0)
        if all(_iou(box, b) < 0.8 for b in boxes):
            boxes.append(box)
        if len(boxes) >= max_boxes:
            break
    return boxes
