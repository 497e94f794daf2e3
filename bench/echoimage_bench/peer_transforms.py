"""The transforms of Thorn `perception`'s benchmarking example, so that EchoImage and the
hashes it is compared with (PDQ, perception's PHash) answer the queries of a peer's own
benchmark.

The example applies, to every photo: a "TEST" watermark, a Gaussian blur (σ up to 2), a
Gaussian vignette, a strong gamma (γ 0.01–0.02, the photo driven to near-white), JPEG 95,
padding of 20–200% on each side, a 5% crop, heavy coarse Gaussian noise, a 4° turn and
nothing at all, through albumentations (its `GaussianBlur(sigma_limit=2)`,
`RandomGamma(gamma_limit=2)`, `ImageCompression(95)`, `CropAndPad(percent=(0.2, 2))`,
`CropAndPad(percent=-0.05)`, `GaussNoise(noise_scale_factor=0.2)`, `Affine(rotate=4)`,
`NoOp`) and two functions of its own (the watermark and the vignette); each result is saved
as a JPEG at OpenCV's default quality, 95. The functions here do the same with OpenCV and
numpy, their random parameters drawn from the benchmark's seeded RNG, plus the near-black
counterpart of the gamma (`gamma_black`: a photo crushed into its darkest levels, as a
badly under-exposed or "dark filter" repost is). Each is a pure function of a BGR uint8
array and an RNG, like those of `transforms`.
"""

from __future__ import annotations

import cv2
import numpy as np

from echoimage_bench.transforms import Transform, TransformFn, check_bgr, jpeg_roundtrip

#: perception saves every transformed photo with cv2.imwrite's default JPEG quality
PEER_QUERY_QUALITY = 95

#: the fraction of each side that `pad20_200` adds (drawn per side)
PAD_RANGE = (0.2, 2.0)

#: the fraction of each side that `crop5` removes
CROP_FRACTION = 0.05

#: the turn of `rotate4`, degrees anticlockwise
ROTATE_DEGREES = 4.0

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _gamma_lut(gamma: float) -> np.ndarray:
    """The 8-bit table of x -> 255 (x/255)^gamma, truncated as albumentations does."""
    return ((np.arange(256, dtype=np.float64) / 255) ** gamma * 255).astype(np.uint8)


def _resize_to(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def pad_sides(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Pixels added (top, right, bottom, left): each side its own fraction of PAD_RANGE of
    the height (top, bottom) or the width (left, right)."""
    top, right, bottom, left = rng.uniform(*PAD_RANGE, 4)
    return int(top * h), int(right * w), int(bottom * h), int(left * w)


def p_noop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """No change (perception's noop; only the query's JPEG 95 encoding changes it)."""
    check_bgr(img)
    return img.copy()


def p_watermark(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The word TEST in black at 200/255 opacity near the bottom-left corner, 20% of the
    width across, strokes 5 px thick (perception's watermark)."""
    check_bgr(img)
    h, w = img.shape[:2]
    (tw, th), _ = cv2.getTextSize("TEST", _FONT, 5, 5)
    k = 0.2 * w / tw
    opacity = np.zeros((h, w), np.uint8)
    cv2.putText(opacity, "TEST", (int(th * k), int(h - th * k)), _FONT, 5 * k, 200, 5)
    keep = (255 - opacity.astype(np.float32))[..., None] / 255
    return (img.astype(np.float32) * keep).astype(np.uint8)


def p_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, σ drawn from 0-2, kernel int(3.5σ)·2 + 1 (albumentations'
    GaussianBlur(sigma_limit=2))."""
    check_bgr(img)
    sigma = float(rng.uniform(0, 2))
    k = int(sigma * 3.5) * 2 + 1
    if k < 3:
        return img.copy()
    return cv2.GaussianBlur(img, (k, k), sigma)


def p_vignette(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Darker towards the edges: a Gaussian of σ half the height by half the width,
    1 at the centre, about 0.37 in the corners (perception's vignette)."""
    check_bgr(img)
    h, w = img.shape[:2]
    mask = cv2.getGaussianKernel(h, h / 2) @ cv2.getGaussianKernel(w, w / 2).T
    mask /= mask.max()
    return (img.astype(np.float64) * mask[..., None]).astype(np.uint8)


def p_gamma_white(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma 0.01-0.02: the photo driven to near-white, its levels squeezed into the
    brightest ~15 (albumentations' RandomGamma(gamma_limit=2))."""
    check_bgr(img)
    return cv2.LUT(img, _gamma_lut(float(rng.uniform(1, 2)) / 100))


def p_gamma_black(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same gamma on the negative: the photo crushed to near-black, its levels squeezed
    into the darkest ~15 (the counterpart of gamma_white)."""
    check_bgr(img)
    lut = _gamma_lut(float(rng.uniform(1, 2)) / 100)
    return cv2.LUT(img, np.ascontiguousarray(255 - lut[::-1]))


def p_jpeg95(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A JPEG quality 95 round trip."""
    check_bgr(img)
    return jpeg_roundtrip(img, 95)


def p_pad(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Black borders of 20-200% of the side on each side, drawn per side, then resized back
    to the photo's size (albumentations' CropAndPad(percent=(0.2, 2)), keep_size)."""
    check_bgr(img)
    h, w = img.shape[:2]
    top, right, bottom, left = pad_sides(h, w, rng)
    padded = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                value=(0, 0, 0))
    return _resize_to(padded, w, h)


def p_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """5% of the height or width cut from each side, then resized back to the photo's size
    (albumentations' CropAndPad(percent=-0.05), keep_size)."""
    check_bgr(img)
    h, w = img.shape[:2]
    dy, dx = int(CROP_FRACTION * h), int(CROP_FRACTION * w)
    return np.ascontiguousarray(_resize_to(img[dy:h - dy, dx:w - dx], w, h))


def p_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of σ 20-44% of 255 per channel, drawn at a fifth of the size and
    resized up (coarse grain), clipped (albumentations' GaussNoise(noise_scale_factor=0.2))."""
    check_bgr(img)
    h, w = img.shape[:2]
    sigma = float(rng.uniform(0.2, 0.44)) * 255
    small = rng.normal(0, sigma, (max(1, int(h * 0.2)), max(1, int(w * 0.2)), 3))
    noise = cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def p_rotate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turned 4° anticlockwise about the centre, same size, black corners
    (albumentations' Affine(rotate=4))."""
    check_bgr(img)
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), ROTATE_DEGREES, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _t(name: str, fn: TransformFn) -> Transform:
    return Transform(name, fn, quality=PEER_QUERY_QUALITY)


#: perception's transform kinds (its names in the descriptions), every query a JPEG 95;
#: the held-out photos go through the same ones as negatives
PEER_TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    _t("watermark", p_watermark),
    _t("blur_0_2", p_blur),
    _t("vignette", p_vignette),
    _t("gamma_white", p_gamma_white),
    _t("gamma_black", p_gamma_black),
    _t("jpeg95", p_jpeg95),
    _t("pad20_200", p_pad),
    _t("crop5", p_crop),
    _t("noise_heavy", p_noise),
    _t("rotate4", p_rotate),
    _t("noop", p_noop),
)}

#: the name each kind has in perception's example
PERCEPTION_NAMES = {"watermark": "watermark", "blur_0_2": "blur2", "vignette": "vignette",
                    "gamma_white": "gamma2", "gamma_black": None, "jpeg95": "jpeg95",
                    "pad20_200": "pad0.2", "crop5": "crop0.05", "noise_heavy": "noise0.2",
                    "rotate4": "rotate4", "noop": "noop"}
