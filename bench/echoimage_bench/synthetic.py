"""The one synthetic-image generator of the project (padding, the load test, the tests,
the product shots): procedural images that are never photos, deterministic in their index
and seed."""

from __future__ import annotations

import cv2
import numpy as np

#: the size of padding images (width, height)
PAD_SIZE = (320, 240)


def synthetic_image(index: int, seed: int = 0, size: tuple[int, int] = PAD_SIZE,
                    colour: bool = False) -> np.ndarray:
    """A procedural uint8 image (never a photo), deterministic in (index, seed): grayscale
    H×W, or with colour BGR H×W×3 (the same image, each channel with a gain of its own).

    A smooth random gradient, a blobby texture at a random scale, 6-15 random rectangles,
    ellipses and lines, and fine noise: enough texture for a full set of ORB keypoints.
    """
    w, h = size
    if w < 32 or h < 32:
        raise ValueError("synthetic images must be at least 32x32")
    rng = np.random.default_rng([seed, index, 0x5EED])
    grid = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    cell = int(rng.integers(6, 24))
    lo = rng.normal(0, float(rng.uniform(10, 35)), (h // cell + 2, w // cell + 2))
    tex = cv2.resize(lo.astype(np.float32), (w + 2 * cell, h + 2 * cell),
                     interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + tex[cell:cell + h, cell:cell + w], 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 16))):
        kind = int(rng.integers(0, 3))
        col = int(rng.integers(0, 256))
        x1, x2 = (int(v) for v in rng.integers(0, w, 2))
        y1, y2 = (int(v) for v in rng.integers(0, h, 2))
        thick = int(rng.choice([-1, -1, 1, 2, 3]))
        if kind == 0:
            cv2.rectangle(img, (x1, y1), (x2, y2), col, thick)
        elif kind == 1:
            axes = (int(rng.integers(4, w // 3)), int(rng.integers(4, h // 3)))
            cv2.ellipse(img, (x1, y1), axes, float(rng.uniform(0, 180)), 0, 360, col, thick,
                        cv2.LINE_AA)
        else:
            cv2.line(img, (x1, y1), (x2, y2), col, int(rng.integers(1, 4)), cv2.LINE_AA)
    img = cv2.add(img, rng.integers(0, 12, (h, w), dtype=np.uint8))
    if not colour:
        return img
    gains = np.random.default_rng([seed, index, 0xC010]).uniform(0.55, 1.15, 3)
    return np.clip(img[..., None].astype(np.float32) * gains.astype(np.float32), 0,
                   255).astype(np.uint8)


#: letters of the labels' words
LETTERS = list("ABCDEFGHKMNPRSTUVXYZ")
#: product shots are this many pixels square
PRODUCT_SIDE = 480


def product_shot(index: int, seed: int = 0, label: bool = True) -> np.ndarray:
    """A BGR product shot, deterministic in (index, seed, label): a box or a round object
    of its own size and colour centred (give or take 15 px) on a white background, with a
    label of 3-7 words and stripes in colours of their own unless label is False."""
    rng = np.random.default_rng([seed, index, 0x5B07])
    img = np.full((PRODUCT_SIDE, PRODUCT_SIDE, 3), 248, np.uint8)
    cx, cy = (PRODUCT_SIDE // 2 + int(d) for d in rng.integers(-15, 15, 2))
    ax, ay = (int(d) for d in rng.integers(90, 170, 2))
    colour = tuple(int(c) for c in rng.integers(30, 200, 3))
    if rng.random() < 0.5:
        cv2.ellipse(img, (cx, cy), (ax, ay), 0, 0, 360, colour, -1)
    else:
        cv2.rectangle(img, (cx - ax, cy - ay), (cx + ax, cy + ay), colour, -1)
    if not label:
        return img
    for _ in range(int(rng.integers(3, 8))):
        ink = tuple(int(c) for c in rng.integers(0, 255, 3))
        x = cx + int(rng.integers(-ax // 2, ax // 3)) - ax // 3
        y = cy + int(rng.integers(-ay // 2, ay // 2))
        if rng.random() < 0.5:
            word = "".join(rng.choice(LETTERS, 4))
            cv2.putText(img, word, (x, y), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.6, 1.4)), ink, 2)
        else:
            cv2.rectangle(img, (x, y), (x + 2 * (ax // 3), y + int(rng.integers(4, 14))), ink,
                          -1)
    return img
