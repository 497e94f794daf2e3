"""The hard suite's edits: what a repost does to a photo when several things happen at once
(crop, mirror, rotation, levels, meme text, low JPEG quality), collages with unrelated
photos, quarter crops, strong rotations and perspective, stickers, heavy noise, tiny
copies and colour filters.

Each edit is a pure function of a BGR uint8 array, a seeded RNG and the other photos it may
paste beside it (a collage's partners; the benchmark gives photos that are not in the
catalogue, so rank 1 has one right answer). Parameters are drawn from the RNG, so every
photo gets its own mixture. The helpers of `bench.transforms` (checks, crops, levels, text
fitting, JPEG) are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from echoimage_bench.transforms import (
    check_bgr,
    crop_frac,
    encode_jpeg,
    fit_text,
    jpeg_roundtrip,
    levels,
    resize_to,
    text_line,
)

HardFn = Callable[[np.ndarray, np.random.Generator, Sequence[np.ndarray]], np.ndarray]

_FONT = cv2.FONT_HERSHEY_DUPLEX
_MEME = ("WHEN YOU", "NOBODY:", "ME AT 3AM", "MONDAY MOOD", "BEST DAY EVER", "SEND HELP",
         "NOT AGAIN", "TRUST ME", "GUESS WHO", "SO TRUE", "PLOT TWIST", "WAIT FOR IT")


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return r, g, b


def rotate_filled(img: np.ndarray, angle: float, fill: tuple[int, int, int],
                  expand: bool = True) -> np.ndarray:
    """img turned by angle degrees (anticlockwise) about its centre; with expand the canvas
    grows to hold the whole turned photo. Corners are filled with a flat colour."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    ow, oh = w, h
    if expand:
        c, s = abs(m[0, 0]), abs(m[0, 1])
        ow, oh = int(round(w * c + h * s)), int(round(w * s + h * c))
        m[0, 2] += (ow - w) / 2
        m[1, 2] += (oh - h) / 2
    return cv2.warpAffine(img, m, (ow, oh), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def meme_text(img: np.ndarray, rng: np.random.Generator, lines: int = 2,
              height: float = 1 / 6) -> np.ndarray:
    """Large white capitals with a black outline across the top (and bottom) of the image,
    each line up to 95% of the width and about `height` of the image's height."""
    out = img.copy()
    h, w = img.shape[:2]
    for k in range(lines):
        text = str(rng.choice(_MEME))
        thick = max(2, round(h * height / 10))
        scale = fit_text(text, 0.95 * w, h * height, thick)
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
        x = (w - tw) // 2
        y = th + max(2, h // 30) if k == 0 else h - base - max(2, h // 30)
        cv2.putText(out, text, (x, y), _FONT, scale, (0, 0, 0), thick * 3, cv2.LINE_AA)
        cv2.putText(out, text, (x, y), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def stickers(img: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n flat, saturated shapes pasted over the image (discs, boxes, stars, smileys),
    each 12-25% of its shorter side across."""
    out = img.copy()
    h, w = img.shape[:2]
    side = min(h, w)
    for _ in range(n):
        r = int(rng.uniform(0.06, 0.125) * side)
        cx, cy = int(rng.integers(r, max(r + 1, w - r))), int(rng.integers(r, max(r + 1, h - r)))
        colour = _colour(rng, 30, 256)
        kind = int(rng.integers(0, 4))
        if kind == 0:
            cv2.circle(out, (cx, cy), r, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(out, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
        elif kind == 2:
            t = np.arange(10) * np.pi / 5 + rng.uniform(0, np.pi)
            rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
            pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).astype(np.int32)
            cv2.fillPoly(out, [pts], colour, cv2.LINE_AA)
        else:  # a smiley
            cv2.circle(out, (cx, cy), r, (0, 215, 255), -1, cv2.LINE_AA)
            for ex in (-r // 3, r // 3):
                cv2.circle(out, (cx + ex, cy - r // 4), max(1, r // 8), (0, 0, 0), -1)
            cv2.ellipse(out, (cx, cy + r // 8), (r // 2, r // 3), 0, 10, 170, (0, 0, 0),
                        max(1, r // 10))
    return out


def hue_shift(img: np.ndarray, degrees: float) -> np.ndarray:
    """Every hue turned by degrees (saturation and value kept)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(degrees / 2))) % 180
                   ).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


_SEPIA = np.array([[0.131, 0.534, 0.272], [0.168, 0.686, 0.349], [0.189, 0.769, 0.393]],
                  np.float32)  # BGR in, BGR out


def sepia(img: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """The classic sepia matrix, blended with the photo by amount."""
    toned = cv2.transform(img.astype(np.float32), _SEPIA)
    mixed = amount * toned + (1 - amount) * img.astype(np.float32)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def vignette(img: np.ndarray, strength: float) -> np.ndarray:
    """Darken towards the corners: brightness × (1 - strength · r²), r = 1 at a corner."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 / 2 + ((yy - h / 2) / (h / 2)) ** 2 / 2
    mask = np.clip(1 - strength * r2, 0, 1)[..., None]
    return (img.astype(np.float32) * mask).astype(np.uint8)


def perspective(img: np.ndarray, rng: np.random.Generator, amount: float,
                fill: tuple[int, int, int]) -> np.ndarray:
    """A perspective warp: each corner moved inwards by up to amount of the width and
    height (at random), the photo's outline kept in the same-size frame."""
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dx, dy = rng.uniform(0, amount, 4) * w, rng.uniform(0, amount, 4) * h
    sign = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    dst = src + sign * np.stack([dx, dy], 1).astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def collage(img: np.ndarray, others: Sequence[np.ndarray], n: int, cell: int,
            rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """An n×n grid of cell-wide cells (the photo's aspect ratio) with white gutters: the
    photo in a random cell, the others in the rest. Returns the collage and the photo's
    (x, y, w, h) in it."""
    if len(others) < n * n - 1:
        raise ValueError(f"a {n}x{n} collage needs {n * n - 1} other photos")
    h, w = img.shape[:2]
    cw, ch = cell, max(8, round(cell * h / w))
    gut = max(2, cell // 60)
    canvas = np.full((n * ch + (n + 1) * gut, n * cw + (n + 1) * gut, 3), 255, np.uint8)
    at = int(rng.integers(0, n * n))
    rest = iter(others)
    box = (0, 0, cw, ch)
    for k in range(n * n):
        r, c = divmod(k, n)
        x, y = gut + c * (cw + gut), gut + r * (ch + gut)
        src = img if k == at else next(rest)
        canvas[y:y + ch, x:x + cw] = resize_to(src, cw, ch)
        if k == at:
            box = (x, y, cw, ch)
    return canvas, box


def off_centre_crop(img: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """A frac × frac crop (of width and height) pushed towards a corner: its offset is in
    the outer quarter of the possible offsets each way, so its centre is off the photo's
    by at least half of what the crop allows."""
    h, w = img.shape[:2]
    ch, cw = max(8, round(h * frac)), max(8, round(w * frac))

    def offset(room: int) -> int:
        at = float(rng.uniform(0.0, 0.25))
        return int(round((at if rng.random() < 0.5 else 1.0 - at) * room))

    y, x = offset(h - ch), offset(w - cw)
    return np.ascontiguousarray(img[y:y + ch, x:x + cw])


# --- the edits ------------------------------------------------------------------------

def h_compound_meme(img: np.ndarray, rng: np.random.Generator,
                    others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """70% crop off-centre, mirrored, turned 7-9°, darkened to 35-50% of its brightness,
    meme text top and bottom a quarter of the height each (then JPEG 40)."""
    check_bgr(img)
    out = off_centre_crop(img, 0.7, rng)[:, ::-1]
    out = rotate_filled(out, float(rng.choice([-1, 1]) * rng.uniform(7, 9)), _colour(rng))
    out = levels(out, float(rng.uniform(0.35, 0.5)), 0)
    return meme_text(out, rng, height=0.25)


def h_compound_sticker(img: np.ndarray, rng: np.random.Generator,
                       others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """60-80% crop off-centre, mirrored half the time, turned 3-10°, brighter, hue turned
    10-40°, 3-5 stickers (then JPEG 50)."""
    check_bgr(img)
    out = off_centre_crop(img, float(rng.uniform(0.6, 0.8)), rng)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = rotate_filled(out, float(rng.choice([-1, 1]) * rng.uniform(3, 10)), _colour(rng))
    out = levels(out, float(rng.uniform(1.1, 1.3)), float(rng.uniform(10, 30)))
    out = hue_shift(out, float(rng.choice([-1, 1]) * rng.uniform(10, 40)))
    return stickers(out, rng, int(rng.integers(3, 6)))


def h_compound_filter(img: np.ndarray, rng: np.random.Generator,
                      others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """75% crop off-centre, mirrored, sepia, vignette, one line of meme text a quarter of
    the height, a JPEG 60 round trip (then JPEG 40)."""
    check_bgr(img)
    out = np.ascontiguousarray(off_centre_crop(img, 0.75, rng)[:, ::-1])
    out = vignette(sepia(out, float(rng.uniform(0.7, 1.0))), float(rng.uniform(0.4, 0.7)))
    return meme_text(jpeg_roundtrip(out, 60), rng, lines=1, height=0.25)


def h_compound_warp(img: np.ndarray, rng: np.random.Generator,
                    others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """80% crop off-centre, a perspective warp (corners in by up to 10%), noise σ 10, a
    caption line, darker or brighter (then JPEG 40)."""
    check_bgr(img)
    out = perspective(off_centre_crop(img, 0.8, rng), rng, 0.1, _colour(rng))
    out = levels(out, float(rng.uniform(0.7, 1.3)), 0)
    noisy = out.astype(np.float32) + rng.normal(0, 10, out.shape).astype(np.float32)
    out = np.clip(noisy, 0, 255).astype(np.uint8)
    h, w = out.shape[:2]
    text = text_line(rng, 4)
    scale = fit_text(text, 0.9 * w, 0.1 * h, 2)
    cv2.putText(out, text, (w // 20, h - h // 20), _FONT, scale, (255, 255, 255), 2,
                cv2.LINE_AA)
    return out


def h_collage2x2(img: np.ndarray, rng: np.random.Generator,
                 others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A 2×2 collage, cells 60% of the photo's width: the photo and three unrelated ones."""
    check_bgr(img)
    return collage(img, others, 2, round(0.6 * img.shape[1]), rng)[0]


def h_collage3x3(img: np.ndarray, rng: np.random.Generator,
                 others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A 3×3 collage, cells 45% of the photo's width: the photo and eight unrelated ones."""
    check_bgr(img)
    return collage(img, others, 3, round(0.45 * img.shape[1]), rng)[0]


def h_crop25(img: np.ndarray, rng: np.random.Generator,
             others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Half the width and half the height (a quarter of the area) at a random offset."""
    check_bgr(img)
    return crop_frac(img, 0.5, rng)


def h_rotate(img: np.ndarray, rng: np.random.Generator,
             others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Turned 15-30° either way, the canvas grown to hold it, corners a flat colour."""
    check_bgr(img)
    angle = float(rng.choice([-1, 1]) * rng.uniform(15, 30))
    return rotate_filled(img, angle, _colour(rng))


def h_perspective(img: np.ndarray, rng: np.random.Generator,
                  others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A perspective warp: each corner moved in by up to 20% of the width and height."""
    check_bgr(img)
    return perspective(img, rng, 0.2, _colour(rng))


def h_stickers(img: np.ndarray, rng: np.random.Generator,
               others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """6-10 stickers and shapes pasted over the photo."""
    check_bgr(img)
    return stickers(img, rng, int(rng.integers(6, 11)))


def h_noise(img: np.ndarray, rng: np.random.Generator,
            others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Gaussian noise σ 25 on every channel, and 2% salt and pepper."""
    check_bgr(img)
    out = img.astype(np.float32) + rng.normal(0, 25, img.shape).astype(np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    salt = rng.random(img.shape[:2])
    out[salt < 0.01] = 0
    out[salt > 0.99] = 255
    return out


def h_tiny64(img: np.ndarray, rng: np.random.Generator,
             others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Longest side 64 px."""
    check_bgr(img)
    f = 64 / max(img.shape[:2])
    return resize_to(img, img.shape[1] * f, img.shape[0] * f)


def h_hue(img: np.ndarray, rng: np.random.Generator,
          others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Every hue turned by 60-180° either way."""
    check_bgr(img)
    return hue_shift(img, float(rng.choice([-1, 1]) * rng.uniform(60, 180)))


def h_sepia(img: np.ndarray, rng: np.random.Generator,
            others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A full sepia tone."""
    check_bgr(img)
    return sepia(img)


def h_vignette(img: np.ndarray, rng: np.random.Generator,
               others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """A strong vignette: corners darkened by 60-90%."""
    check_bgr(img)
    return vignette(img, float(rng.uniform(0.6, 0.9)))


@dataclass(frozen=True)
class HardEdit:
    """A named hard edit: pixels (and partner photos) in, pixels out, then JPEG at
    `quality`. `partners` is how many other photos it pastes beside the photo."""

    name: str
    fn: HardFn
    quality: int = 90
    partners: int = 0
    compound: bool = False

    @property
    def description(self) -> str:
        """First sentence of the edit's docstring."""
        return " ".join((self.fn.__doc__ or "").split()).split(". ")[0]


HARD_EDITS: dict[str, HardEdit] = {e.name: e for e in (
    HardEdit("compound_meme", h_compound_meme, quality=40, compound=True),
    HardEdit("compound_sticker", h_compound_sticker, quality=50, compound=True),
    HardEdit("compound_filter", h_compound_filter, quality=40, compound=True),
    HardEdit("compound_warp", h_compound_warp, quality=40, compound=True),
    HardEdit("collage2x2", h_collage2x2, partners=3),
    HardEdit("collage3x3", h_collage3x3, partners=8),
    HardEdit("crop25", h_crop25),
    HardEdit("rotate15_30", h_rotate),
    HardEdit("perspective", h_perspective),
    HardEdit("stickers", h_stickers),
    HardEdit("noise", h_noise),
    HardEdit("tiny64", h_tiny64),
    HardEdit("hue", h_hue),
    HardEdit("sepia", h_sepia),
    HardEdit("vignette", h_vignette),
)}


def make_hard_query(img: np.ndarray, edit: HardEdit, rng: np.random.Generator,
                    pool: Sequence[np.ndarray]) -> bytes:
    """Pick the edit's partners from pool with rng, apply it and JPEG-encode the result."""
    if edit.partners > len(pool):
        raise ValueError(f"{edit.name} needs {edit.partners} partner photos, got {len(pool)}")
    pick = rng.choice(len(pool), size=edit.partners, replace=False) if edit.partners else []
    return encode_jpeg(edit.fn(img, rng, [pool[int(k)] for k in pick]), edit.quality)
