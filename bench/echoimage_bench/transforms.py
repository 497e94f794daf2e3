"""The benchmark's transforms: what a copy of a photo goes through (pure functions of a
BGR uint8 array and a seeded RNG), and the JPEG query each one makes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

TransformFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


QUERY_QUALITY = 90


NEGATIVE_TRANSFORMS = ("identity", "jpeg30", "mirror", "crop80", "crop40_rand", "screenshot")


def check_bgr(img: np.ndarray) -> None:
    """Refuse anything but a BGR uint8 H×W×3 array of at least 8×8 pixels."""
    if not isinstance(img, np.ndarray):
        raise TypeError("transforms take a numpy array")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"transforms take a BGR uint8 HxWx3 array, got {img.dtype} "
                         f"{img.shape}")
    if min(img.shape[:2]) < 8:
        raise ValueError("image too small to transform")


def encode_jpeg(img: np.ndarray, quality: int = QUERY_QUALITY) -> bytes:
    """JPEG bytes of a BGR (or gray) uint8 image."""
    if not 1 <= quality <= 100:
        raise ValueError("JPEG quality must be in 1..100")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("image could not be JPEG-encoded")
    return buf.tobytes()


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at quality and decode again (BGR)."""
    out = cv2.imdecode(np.frombuffer(encode_jpeg(img, quality), np.uint8), cv2.IMREAD_COLOR)
    if out is None:
        raise ValueError("JPEG round trip failed")
    return out


def levels(img: np.ndarray, gain: float, bias: float) -> np.ndarray:
    """img × gain + bias, clipped to 0..255."""
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def resize_to(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """img resized to w×h (area averaging down, cubic up)."""
    w, h = max(1, int(round(w))), max(1, int(round(h)))
    interp = cv2.INTER_AREA if w * h < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def crop_frac(img: np.ndarray, frac: float, rng: np.random.Generator | None) -> np.ndarray:
    """A frac x frac (of width and height) crop: centred, or at a random offset with rng."""
    h, w = img.shape[:2]
    ch, cw = max(8, round(h * frac)), max(8, round(w * frac))
    if rng is None:
        y, x = (h - ch) // 2, (w - cw) // 2
    else:
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(img[y:y + ch, x:x + cw])


def t_identity(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo itself (only the query's q90 JPEG encoding changes it)."""
    check_bgr(img)
    return img.copy()


def t_jpeg30(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG quality 30 round trip (the query is then encoded at q30 too)."""
    check_bgr(img)
    return jpeg_roundtrip(img, 30)


def t_downscale50(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half width and height (INTER_AREA)."""
    check_bgr(img)
    return resize_to(img, img.shape[1] * 0.5, img.shape[0] * 0.5)


def t_thumb128(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Longest side 128 px."""
    check_bgr(img)
    f = 128 / max(img.shape[:2])
    return resize_to(img, img.shape[1] * f, img.shape[0] * f)


def t_upscale2x(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Twice the width and height (INTER_CUBIC)."""
    check_bgr(img)
    return resize_to(img, img.shape[1] * 2, img.shape[0] * 2)


def t_blur2(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 2."""
    check_bgr(img)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def t_brighter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x1.3 + 30, clipped."""
    check_bgr(img)
    return levels(img, 1.3, 30)


def t_darker(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x0.6."""
    check_bgr(img)
    return levels(img, 0.6, 0)


def t_grayscale(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grayscale, kept as 3 equal channels."""
    check_bgr(img)
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def t_mirror(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-right mirror."""
    check_bgr(img)
    return np.ascontiguousarray(img[:, ::-1])


def t_rot90(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A quarter turn anticlockwise (width and height swap)."""
    check_bgr(img)
    return np.ascontiguousarray(np.rot90(img))


def t_rot5(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """5 degrees anticlockwise about the centre, same size, black corners (not reflected)."""
    check_bgr(img)
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 5.0, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def t_crop80(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre crop of 80% of the width and 80% of the height (64% of the area)."""
    check_bgr(img)
    return crop_frac(img, 0.8, None)


def t_border20(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A solid border of 20% of the width (left, right) and height (top, bottom) on each side.

    The result is 1.4x the size and the photo is its middle 1/1.4 = 71% (51% of the area).
    The border colour is drawn from rng.
    """
    check_bgr(img)
    h, w = img.shape[:2]
    colour = [int(v) for v in rng.integers(0, 256, 3)]
    py, px = round(0.2 * h), round(0.2 * w)
    return cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_CONSTANT, value=colour)


def fit_text(text: str, max_w: float, max_h: float, thickness: int) -> float:
    """The font scale at which text fits max_w × max_h pixels."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)
    return max(0.2, min(max_w / max(tw, 1), max_h / max(th + base, 1)))


def t_banner15(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A semi-transparent (75% black) band over the bottom 15% of the height, white text."""
    check_bgr(img)
    out = img.copy()
    h, w = img.shape[:2]
    bh = max(4, round(0.15 * h))
    band = out[h - bh:]
    band[:] = (band.astype(np.float32) * 0.25 + 20 * 0.75).astype(np.uint8)
    text = "SALE -50% | shop.example.com"
    thick = max(1, bh // 20)
    scale = fit_text(text, 0.9 * w, 0.6 * bh, thick)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    org = ((w - tw) // 2, h - (bh - th) // 2)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return out


def t_stretch135(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Width x1.35, height unchanged (aspect change)."""
    check_bgr(img)
    return resize_to(img, img.shape[1] * 1.35, img.shape[0])


def t_combo(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre crop 90%, then x1.1 + 15, then a JPEG q50 round trip (query encoded at q50)."""
    check_bgr(img)
    return jpeg_roundtrip(levels(crop_frac(img, 0.9, None), 1.1, 15), 50)


def t_crop60_rand(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """60% of the width and height (36% of the area) at a random offset."""
    check_bgr(img)
    return crop_frac(img, 0.6, rng)


def t_crop40_rand(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """40% of the width and height (16% of the area) at a random offset."""
    check_bgr(img)
    return crop_frac(img, 0.4, rng)


def t_crop60_rot90(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """crop60_rand, then a quarter turn anticlockwise."""
    check_bgr(img)
    return np.ascontiguousarray(np.rot90(crop_frac(img, 0.6, rng)))


def t_crop60_mirror(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """crop60_rand, then mirrored left-right (a flipped re-upload)."""
    check_bgr(img)
    return np.ascontiguousarray(crop_frac(img, 0.6, rng)[:, ::-1])


_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "photo", "shared", "reply", "like",
          "view", "gallery", "profile", "settings", "upload", "today", "search", "home")


def text_line(rng: np.random.Generator, n: int) -> str:
    """n filler words for a caption."""
    return " ".join(str(rng.choice(_WORDS)) for _ in range(n))


def t_screenshot(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo at 50% pasted into a 1.6x canvas of a flat, UI-like page.

    The page has a header bar, a sidebar with menu text, a few cards/buttons and lines of
    text, all drawn with cv2 (no other photos). The photo covers about 10% of the canvas.
    """
    check_bgr(img)
    h, w = img.shape[:2]
    ch, cw = round(1.6 * h), round(1.6 * w)
    bg = int(rng.integers(225, 250))
    canvas = np.full((ch, cw, 3), bg, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    hdr, side = max(8, round(0.08 * ch)), max(8, round(0.18 * cw))
    accent = tuple(int(v) for v in rng.integers(40, 200, 3))
    cv2.rectangle(canvas, (0, 0), (cw, hdr), accent, -1)
    s = fit_text("Gallery", 0.3 * cw, 0.6 * hdr, 1)
    cv2.putText(canvas, "Gallery", (side // 4, int(hdr * 0.75)), font, s, (255, 255, 255), 1,
                cv2.LINE_AA)
    cv2.rectangle(canvas, (0, hdr), (side, ch), (bg - 25,) * 3, -1)
    line_h = max(10, hdr // 2)
    s_small = fit_text("settings", 0.7 * side, 0.6 * line_h, 1)
    for i in range(5):
        y = hdr + (i + 1) * 2 * line_h
        if y < ch:
            cv2.putText(canvas, str(rng.choice(_WORDS)), (side // 8, y), font, s_small,
                        (60, 60, 60), 1, cv2.LINE_AA)
    margin = max(4, round(0.03 * cw))
    pw, ph = max(8, round(0.5 * w)), max(8, round(0.5 * h))
    x0, y0 = side + margin, hdr + margin
    px = int(rng.integers(x0, max(x0, cw - pw - margin) + 1))
    py = int(rng.integers(y0, max(y0, ch - ph - margin) + 1))
    for _ in range(int(rng.integers(3, 6))):  # cards and buttons
        rx, ry = int(rng.integers(x0, cw - margin)), int(rng.integers(y0, ch - margin))
        rw, rh = int(rng.integers(cw // 12, cw // 3)), int(rng.integers(ch // 20, ch // 5))
        fill = (int(rng.integers(200, 256)),) * 3
        cv2.rectangle(canvas, (rx, ry), (rx + rw, ry + rh), fill, -1)
        cv2.rectangle(canvas, (rx, ry), (rx + rw, ry + rh), (bg - 60,) * 3, 1)
    for _ in range(int(rng.integers(4, 9))):  # text lines
        tx, ty = int(rng.integers(x0, cw - margin)), int(rng.integers(y0 + line_h, ch))
        cv2.putText(canvas, text_line(rng, int(rng.integers(2, 6))), (tx, ty), font, s_small,
                    (40, 40, 40), 1, cv2.LINE_AA)
    canvas[py:py + ph, px:px + pw] = resize_to(img, pw, ph)[: ch - py, : cw - px]
    cv2.putText(canvas, text_line(rng, 3), (px, min(ch - 2, py + ph + line_h)), font, s_small,
                (90, 90, 90), 1, cv2.LINE_AA)
    return canvas


def _hue_shift(img: np.ndarray, degrees: float, mask: np.ndarray | None = None
               ) -> np.ndarray:
    """img with its hue turned by degrees (HSV, full 0..255 hue range), where mask (a float
    0..1 weight per pixel) allows, everywhere without one."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL)
    turned = hsv.copy()
    turned[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees * 256 / 360)) % 256
                      ).astype(np.uint8)
    out = cv2.cvtColor(turned, cv2.COLOR_HSV2BGR_FULL)
    if mask is None:
        return out
    m = mask[..., None].astype(np.float32)
    return np.clip(out * m + img * (1 - m) + 0.5, 0, 255).astype(np.uint8)


def t_hue60(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue turned by 60 degrees (HSV), saturation and value kept."""
    check_bgr(img)
    return _hue_shift(img, 60)


def t_hue120(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue turned by 120 degrees (HSV), saturation and value kept."""
    check_bgr(img)
    return _hue_shift(img, 120)


def t_hue180(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hue turned by 180 degrees (HSV), saturation and value kept."""
    check_bgr(img)
    return _hue_shift(img, 180)


def t_channel_swap(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour channels rotated: red becomes green, green blue, blue red."""
    check_bgr(img)
    return np.ascontiguousarray(img[..., [1, 2, 0]])


def t_recolour_object(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo's dominant saturated colour turned by 120 degrees of hue, the rest kept
    (a product photo in another colour variant)."""
    check_bgr(img)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL)
    hue, sat = hsv[..., 0].astype(np.float32), hsv[..., 1].astype(np.float32)
    weight = np.clip((sat - 40) / 40, 0, 1)
    hist = np.bincount(hsv[..., 0].ravel() // 16, weight.ravel(), 16)
    centre = (int(np.argmax(hist)) + 0.5) * 16
    off = np.abs((hue - centre + 128) % 256 - 128)  # hue steps from the dominant colour
    mask = weight * np.clip((40 - off) / 12, 0, 1)  # within ~45 degrees, soft edge
    return _hue_shift(img, 120, cv2.GaussianBlur(mask, (0, 0), 1.5))


@dataclass(frozen=True)
class Transform:
    """A named query transform: pixels in, pixels out, then JPEG at `quality`."""

    name: str
    fn: TransformFn
    quality: int = QUERY_QUALITY
    extra: bool = False  # a part of the photo (crops, screenshot): reported apart
    recolours: bool = False  # changes the photo's colours (colour-sensitive mode's target)

    @property
    def description(self) -> str:
        """First line of the transform's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0]


TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("identity", t_identity),
    Transform("jpeg30", t_jpeg30, quality=30),
    Transform("downscale50", t_downscale50),
    Transform("thumb128", t_thumb128),
    Transform("upscale2x", t_upscale2x),
    Transform("blur2", t_blur2),
    Transform("brighter", t_brighter),
    Transform("darker", t_darker),
    Transform("grayscale", t_grayscale, recolours=True),
    Transform("mirror", t_mirror),
    Transform("rot90", t_rot90),
    Transform("rot5", t_rot5),
    Transform("crop80", t_crop80),
    Transform("border20", t_border20),
    Transform("banner15", t_banner15),
    Transform("stretch1.35", t_stretch135),
    Transform("combo", t_combo, quality=50),
    Transform("crop60_rand", t_crop60_rand, extra=True),
    Transform("crop40_rand", t_crop40_rand, extra=True),
    Transform("crop60_rot90", t_crop60_rot90, extra=True),
    Transform("crop60_mirror", t_crop60_mirror, extra=True),
    Transform("screenshot", t_screenshot, extra=True),
)}


#: colour variants of a photo, run apart from TRANSFORMS (their figures are their own):
#: with grayscale they are what colour-sensitive mode should call `recoloured`
RECOLOUR_TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("hue60", t_hue60, recolours=True),
    Transform("hue120", t_hue120, recolours=True),
    Transform("hue180", t_hue180, recolours=True),
    Transform("channel_swap", t_channel_swap, recolours=True),
    Transform("recolour_object", t_recolour_object, recolours=True),
)}


def transform_rng(seed: int, photo: int, transform: str) -> np.random.Generator:
    """The RNG of one (photo, transform) query: independent of the order queries run in."""
    tag = int.from_bytes(hashlib.sha256(transform.encode()).digest()[:4], "big")
    return np.random.default_rng([seed, photo, tag])


def make_query(img: np.ndarray, transform: Transform, rng: np.random.Generator) -> bytes:
    """Apply a transform and JPEG-encode the result at the transform's quality."""
    return encode_jpeg(transform.fn(img, rng), transform.quality)
