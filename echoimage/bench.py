"""The benchmark: a copy-detection suite built from any folder of photos.

`run_benchmark(photo_dir, out_dir, ...)` is the library function behind
`scripts/benchmark.py` (and, later, `echoimage bench`). It

1. splits the sorted photo list with a seeded RNG into a catalogue (~80%) and held-out
   negatives (~20%), indexes the catalogue with `build_index` into a fresh store under
   ``out_dir/data`` and measures build throughput, memory and bytes per image;
2. queries every catalogue photo (or a deterministic subset of ``limit``) under each
   transform in `TRANSFORMS`, JPEG-encoded (q90 unless the transform has its own quality),
   through one `SearchEngine.query_bytes` in this process: recall@1/@5, the verdict
   (`duplicate`) and the scores of correct answers;
3. queries the negatives under `NEGATIVE_TRANSFORMS`: false-match rate, score quantiles and
   the calibrated threshold that keeps false matches <= 1%;
4. times `SearchEngine.query_image` (decoded image → results) and `query_bytes` on a fixed
   sample of queries, at catalogue size and again after padding the store to each ``scale``
   with synthetic images (real rows, real features; cached in ``out_dir/pad``);
5. runs two baselines the same way: 64-bit pHash nearest neighbour over the stored hashes,
   and the seed's brute-force SSIM + ORB + colour histogram score on a small subset.

Everything it finds is returned as a JSON-ready dict and written to ``out_dir/bench.json``;
`render_markdown` turns it into the table written to ``out_dir/bench.md``. Progress goes to
stderr only. The transforms, metrics, table, synthetic-image and seed-score helpers are
pure functions; padding (`build_padding`) and the run itself do the I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BENCH_VERSION = 1
#: bump when `synthetic_image` or the padding rows change: invalidates cached padding
PAD_VERSION = 3
PAD_SOURCE = "synthetic://pad"
PAD_SIZE = (320, 240)
QUERY_QUALITY = 90
NEGATIVE_TRANSFORMS = ("identity", "jpeg30", "mirror", "crop80", "crop40_rand", "screenshot")
PHASH_THRESHOLD = 10
TARGET_FMR = 0.01
TOP_K = 5

TransformFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- transforms


def _check_bgr(img: np.ndarray) -> None:
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


def _levels(img: np.ndarray, gain: float, bias: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    w, h = max(1, int(round(w))), max(1, int(round(h)))
    interp = cv2.INTER_AREA if w * h < img.shape[0] * img.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def _crop(img: np.ndarray, frac: float, rng: np.random.Generator | None) -> np.ndarray:
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
    _check_bgr(img)
    return img.copy()


def t_jpeg30(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JPEG quality 30 round trip (the query is then encoded at q30 too)."""
    _check_bgr(img)
    return jpeg_roundtrip(img, 30)


def t_downscale50(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half width and height (INTER_AREA)."""
    _check_bgr(img)
    return _resize(img, img.shape[1] * 0.5, img.shape[0] * 0.5)


def t_thumb128(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Longest side 128 px."""
    _check_bgr(img)
    f = 128 / max(img.shape[:2])
    return _resize(img, img.shape[1] * f, img.shape[0] * f)


def t_upscale2x(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Twice the width and height (INTER_CUBIC)."""
    _check_bgr(img)
    return _resize(img, img.shape[1] * 2, img.shape[0] * 2)


def t_blur2(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 2."""
    _check_bgr(img)
    return cv2.GaussianBlur(img, (0, 0), 2.0)


def t_brighter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x1.3 + 30, clipped."""
    _check_bgr(img)
    return _levels(img, 1.3, 30)


def t_darker(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x0.6."""
    _check_bgr(img)
    return _levels(img, 0.6, 0)


def t_grayscale(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grayscale, kept as 3 equal channels."""
    _check_bgr(img)
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def t_mirror(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-right mirror."""
    _check_bgr(img)
    return np.ascontiguousarray(img[:, ::-1])


def t_rot90(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A quarter turn anticlockwise (width and height swap)."""
    _check_bgr(img)
    return np.ascontiguousarray(np.rot90(img))


def t_rot5(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """5 degrees anticlockwise about the centre, same size, black corners (not reflected)."""
    _check_bgr(img)
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 5.0, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def t_crop80(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre crop of 80% of the width and 80% of the height (64% of the area)."""
    _check_bgr(img)
    return _crop(img, 0.8, None)


def t_border20(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A solid border of 20% of the width (left, right) and height (top, bottom) on each side.

    The result is 1.4x the size and the photo is its middle 1/1.4 = 71% (51% of the area).
    The border colour is drawn from rng.
    """
    _check_bgr(img)
    h, w = img.shape[:2]
    colour = [int(v) for v in rng.integers(0, 256, 3)]
    py, px = round(0.2 * h), round(0.2 * w)
    return cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_CONSTANT, value=colour)


def _fit_text(text: str, max_w: float, max_h: float, thickness: int) -> float:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)
    return max(0.2, min(max_w / max(tw, 1), max_h / max(th + base, 1)))


def t_banner15(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A semi-transparent (75% black) band over the bottom 15% of the height, white text."""
    _check_bgr(img)
    out = img.copy()
    h, w = img.shape[:2]
    bh = max(4, round(0.15 * h))
    band = out[h - bh:]
    band[:] = (band.astype(np.float32) * 0.25 + 20 * 0.75).astype(np.uint8)
    text = "SALE -50% | shop.example.com"
    thick = max(1, bh // 20)
    scale = _fit_text(text, 0.9 * w, 0.6 * bh, thick)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    org = ((w - tw) // 2, h - (bh - th) // 2)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return out


def t_stretch135(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Width x1.35, height unchanged (aspect change)."""
    _check_bgr(img)
    return _resize(img, img.shape[1] * 1.35, img.shape[0])


def t_combo(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre crop 90%, then x1.1 + 15, then a JPEG q50 round trip (query encoded at q50)."""
    _check_bgr(img)
    return jpeg_roundtrip(_levels(_crop(img, 0.9, None), 1.1, 15), 50)


def t_crop60_rand(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """60% of the width and height (36% of the area) at a random offset."""
    _check_bgr(img)
    return _crop(img, 0.6, rng)


def t_crop40_rand(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """40% of the width and height (16% of the area) at a random offset."""
    _check_bgr(img)
    return _crop(img, 0.4, rng)


def t_crop60_rot90(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """crop60_rand, then a quarter turn anticlockwise."""
    _check_bgr(img)
    return np.ascontiguousarray(np.rot90(_crop(img, 0.6, rng)))


def t_crop60_mirror(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """crop60_rand, then mirrored left-right (a flipped re-upload)."""
    _check_bgr(img)
    return np.ascontiguousarray(_crop(img, 0.6, rng)[:, ::-1])


_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "photo", "shared", "reply", "like",
          "view", "gallery", "profile", "settings", "upload", "today", "search", "home")


def _text_line(rng: np.random.Generator, n: int) -> str:
    return " ".join(str(rng.choice(_WORDS)) for _ in range(n))


def t_screenshot(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo at 50% pasted into a 1.6x canvas of a flat, UI-like page.

    The page has a header bar, a sidebar with menu text, a few cards/buttons and lines of
    text, all drawn with cv2 (no other photos). The photo covers about 10% of the canvas.
    """
    _check_bgr(img)
    h, w = img.shape[:2]
    ch, cw = round(1.6 * h), round(1.6 * w)
    bg = int(rng.integers(225, 250))
    canvas = np.full((ch, cw, 3), bg, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    hdr, side = max(8, round(0.08 * ch)), max(8, round(0.18 * cw))
    accent = tuple(int(v) for v in rng.integers(40, 200, 3))
    cv2.rectangle(canvas, (0, 0), (cw, hdr), accent, -1)
    s = _fit_text("Gallery", 0.3 * cw, 0.6 * hdr, 1)
    cv2.putText(canvas, "Gallery", (side // 4, int(hdr * 0.75)), font, s, (255, 255, 255), 1,
                cv2.LINE_AA)
    cv2.rectangle(canvas, (0, hdr), (side, ch), (bg - 25,) * 3, -1)
    line_h = max(10, hdr // 2)
    s_small = _fit_text("settings", 0.7 * side, 0.6 * line_h, 1)
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
        cv2.putText(canvas, _text_line(rng, int(rng.integers(2, 6))), (tx, ty), font, s_small,
                    (40, 40, 40), 1, cv2.LINE_AA)
    canvas[py:py + ph, px:px + pw] = _resize(img, pw, ph)[: ch - py, : cw - px]
    cv2.putText(canvas, _text_line(rng, 3), (px, min(ch - 2, py + ph + line_h)), font, s_small,
                (90, 90, 90), 1, cv2.LINE_AA)
    return canvas


@dataclass(frozen=True)
class Transform:
    """A named query transform: pixels in, pixels out, then JPEG at `quality`."""

    name: str
    fn: TransformFn
    quality: int = QUERY_QUALITY
    extra: bool = False  # a part of the photo (crops, screenshot): reported apart

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
    Transform("grayscale", t_grayscale),
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


def transform_rng(seed: int, photo: int, transform: str) -> np.random.Generator:
    """The RNG of one (photo, transform) query: independent of the order queries run in."""
    tag = int.from_bytes(hashlib.sha256(transform.encode()).digest()[:4], "big")
    return np.random.default_rng([seed, photo, tag])


def make_query(img: np.ndarray, transform: Transform, rng: np.random.Generator) -> bytes:
    """Apply a transform and JPEG-encode the result at the transform's quality."""
    return encode_jpeg(transform.fn(img, rng), transform.quality)


# --------------------------------------------------------------------------- metrics


def rank_of(truth: str, ranked: Sequence[str]) -> int | None:
    """1-based rank of truth among ranked results, or None when absent."""
    for i, r in enumerate(ranked, 1):
        if r == truth:
            return i
    return None


def recall_at_k(ranks: Sequence[int | None], k: int) -> float | None:
    """Fraction of queries whose truth is ranked <= k; None for no queries."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if not ranks:
        return None
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def rate(flags: Iterable[bool]) -> float | None:
    """Fraction of true flags; None for an empty sequence."""
    flags = list(flags)
    return sum(1 for f in flags if f) / len(flags) if flags else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation as numpy's default); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in 0..100")
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def quantiles(values: Sequence[float], qs: Sequence[float] = (0, 5, 50, 95, 100)
              ) -> dict[str, float] | None:
    """{"p5": ..., ...} of values (p0 is "min", p100 is "max"); None if empty."""
    if not len(values):
        return None
    out = {}
    for q in qs:
        key = "min" if q == 0 else "max" if q == 100 else f"p{q:g}"
        out[key] = round(float(percentile(values, q)), 4)  # type: ignore[arg-type]
    return out


def just_above(score: float, digits: int = 4) -> float:
    """The smallest multiple of 10**-digits strictly above score (a threshold that
    excludes it and survives rounding in the report)."""
    scale = 10 ** digits
    return math.floor(score * scale + 1e-6) / scale + 1 / scale


def threshold_at_fmr(negative_scores: Sequence[float], max_rate: float) -> float | None:
    """Lowest score threshold t (verdict: score >= t) with false-match rate <= max_rate.

    At most floor(max_rate * n) negatives may score >= t; t is `just_above` the first
    negative score that must be excluded. None without negatives.
    """
    if not 0 <= max_rate < 1:
        raise ValueError("max_rate must be in [0, 1)")
    if not len(negative_scores):
        return None
    desc = sorted((float(s) for s in negative_scores), reverse=True)
    allowed = math.floor(max_rate * len(desc) + 1e-9)
    if allowed >= len(desc):
        return 0.0
    return just_above(desc[allowed])


def hamming_topk(query: bytes, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and Hamming distances of the k codes nearest to query (ties by row)."""
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise ValueError("codes must be an N x B uint8 array")
    if len(query) != codes.shape[1]:
        raise ValueError(f"query has {len(query)} bytes, codes have {codes.shape[1]}")
    if k < 1:
        raise ValueError("k must be at least 1")
    q = np.frombuffer(query, np.uint8)
    dist = np.bitwise_count(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.int64)
    order = np.argsort(dist, kind="stable")[:k]
    return order, dist[order]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; align holds "l" or "r" per column (default: l then r)."""
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError("align must have one entry per column")
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}")

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_rate(x: float | None, digits: int = 3) -> str:
    """A rate for a table cell; an em dash for None."""
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ms(x: float | None) -> str:
    """Milliseconds for a table cell."""
    return "—" if x is None else f"{x:.1f} ms"


# --------------------------------------------------------------------------- seed baseline


@dataclass(frozen=True)
class SeedScore:
    """The seed's similarity of two images and its three components."""

    score: float
    ssim: float
    orb_ratio: float
    hist: float


def seed_score(a: np.ndarray, b: np.ndarray, size: int = 256) -> SeedScore:
    """Echo-Image's brute-force score of query a against catalogue image b (BGR uint8).

    Both are resized to size x size colour; the score is the mean of SSIM (scikit-image,
    channel_axis), the ORB good-match ratio (FLANN LSH k=2, Lowe ratio 0.75, good matches /
    query keypoints) and the correlation of 8x8x8 colour histograms.
    """
    from skimage.metrics import structural_similarity

    _check_bgr(a)
    _check_bgr(b)
    x = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
    y = cv2.resize(b, (size, size), interpolation=cv2.INTER_AREA)
    sim = float(structural_similarity(x, y, channel_axis=2, data_range=255))
    orb = cv2.ORB_create()
    ka, da = orb.detectAndCompute(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), None)
    kb, db = orb.detectAndCompute(cv2.cvtColor(y, cv2.COLOR_BGR2GRAY), None)
    ratio = 0.0
    if da is not None and db is not None and len(da) >= 2 and len(db) >= 2:
        flann = cv2.FlannBasedMatcher(
            {"algorithm": 6, "table_number": 6, "key_size": 12, "multi_probe_level": 1},
            {"checks": 50})
        pairs = flann.knnMatch(da, db, k=2)
        good = sum(1 for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance)
        ratio = min(1.0, good / max(1, len(ka)))
    ranges = [0, 256, 0, 256, 0, 256]
    hx = cv2.calcHist([x], [0, 1, 2], None, [8, 8, 8], ranges)
    hy = cv2.calcHist([y], [0, 1, 2], None, [8, 8, 8], ranges)
    cv2.normalize(hx, hx)
    cv2.normalize(hy, hy)
    hist = float(cv2.compareHist(hx, hy, cv2.HISTCMP_CORREL))
    return SeedScore((sim + ratio + hist) / 3, sim, ratio, hist)


# --------------------------------------------------------------------------- padding


def synthetic_image(index: int, seed: int = 0, size: tuple[int, int] = PAD_SIZE) -> np.ndarray:
    """A procedural grayscale uint8 image (never a photo), deterministic in (index, seed).

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
    return cv2.add(img, rng.integers(0, 12, (h, w), dtype=np.uint8))


def pad_url(index: int) -> str:
    """Catalogue URL of synthetic padding entry `index`."""
    return f"{PAD_SOURCE}/{index:06d}"


def _pad_init() -> None:
    cv2.setNumThreads(1)


def _pad_features(args: tuple[int, int, tuple[int, int, int, int]]) -> tuple:
    """Worker: synthetic image → BMP bytes → decode_image → extract_features."""
    from echoimage.features.decode import decode_image
    from echoimage.features.extract import extract_features

    index, seed, (max_pixels, work_size, thumb_size, nfeatures) = args
    t0 = time.process_time()
    ok, buf = cv2.imencode(".bmp", synthetic_image(index, seed))
    if not ok:
        raise RuntimeError("BMP encoding failed")
    data = buf.tobytes()
    feats = extract_features(decode_image(data, max_pixels, work_size), thumb_size, nfeatures)
    return index, hashlib.sha256(data).hexdigest(), len(data), feats, time.process_time() - t0


def copy_sqlite(src: Path, dst: Path) -> None:
    """Consistent copy of a SQLite database (WAL included) with the backup API."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    with closing(sqlite3.connect(src)) as s, closing(sqlite3.connect(dst)) as d:
        s.backup(d)


# --------------------------------------------------------------------------- process memory


def _rss_mb(kb: float) -> float:
    return round(kb / 1024, 1)


def self_peak_rss_mb() -> float:
    """Peak RSS of this process (ru_maxrss), MB."""
    return _rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def children_peak_rss_mb() -> float:
    """Largest peak RSS of any waited-for child (ru_maxrss of RUSAGE_CHILDREN), MB."""
    return _rss_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


class ProcessTreePeak:
    """Samples VmHWM/VmRSS of this process's descendants (Linux /proc) while active.

    Pool workers started through the forkserver are its children, not ours, so
    RUSAGE_CHILDREN never sees them; sampling /proc does.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.max_child_kb = 0  # largest VmHWM of a single descendant
        self.max_total_kb = 0  # largest sum of VmRSS over descendants at one instant
        self.processes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: set[int] = set()

    @staticmethod
    def _descendants(root: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
        out, todo = [], [root]
        while todo:
            for c in children.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out

    def sample(self) -> None:
        """Read the memory of every current descendant once."""
        total = 0
        for pid in self._descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/status") as fh:
                    status = fh.read()
            except OSError:
                continue
            self._seen.add(pid)
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.max_child_kb = max(self.max_child_kb, int(line.split()[1]))
                elif line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        self.max_total_kb = max(self.max_total_kb, total)
        self.processes = len(self._seen)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, ValueError, IndexError):
                pass

    def __enter__(self) -> ProcessTreePeak:
        if os.path.isdir("/proc"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready peaks in MB."""
        return {"max_single_child_mb": _rss_mb(self.max_child_kb),
                "max_children_total_mb": _rss_mb(self.max_total_kb),
                "processes_seen": self.processes}


# --------------------------------------------------------------------------- the run


class _Log:
    """Progress lines on stderr, with the time since the start of the run."""

    def __init__(self, enabled: bool, prefix: str = "bench") -> None:
        self.enabled = enabled
        self.prefix = prefix
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{self.prefix} {time.perf_counter() - self.t0:6.0f}s] {msg}",
                  file=sys.stderr, flush=True)

    def loop(self, what: str, total: int) -> Callable[[int], None]:
        """A callback(done) that logs done/total with a rate every ~15 s."""
        start = last = time.perf_counter()

        def tick(done: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if done == total or now - last >= 15:
                last = now
                r = done / max(now - start, 1e-9)
                eta = (total - done) / r if r > 0 else 0
                self(f"{what}: {done}/{total} ({r:.1f}/s, ~{eta:.0f}s left)")

        return tick


@dataclass
class _QueryRec:
    """One positive query of the recall sweep."""

    transform: str
    photo: int
    rank: int | None
    top_score: float
    top_dup: bool
    e2e_ms: float
    phash_rank: int | None
    phash_top_dist: int
    phash_truth_dist: int


@dataclass
class _Ctx:
    """State shared by the phases of one run."""

    log: _Log
    seed: int
    settings: Any
    catalogue: list[Path]
    urls: list[str]  # store URL of each catalogue photo
    url_ids: dict[str, int]
    query_photos: list[int]  # indices into catalogue
    phash_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    phash_codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), np.uint8))
    id_urls: dict[int, str] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    images: dict[int, np.ndarray] = field(default_factory=dict)


def _machine() -> dict[str, Any]:
    import faiss
    import skimage
    import sqlalchemy

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "opencv": cv2.__version__, "faiss": faiss.__version__,
            "scikit_image": skimage.__version__, "sqlalchemy": sqlalchemy.__version__,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def _list_photos(photo_dir: Path) -> list[Path]:
    from echoimage.catalogue import IMAGE_EXTENSIONS

    if not photo_dir.is_dir():
        raise ValueError(f"not a directory: {photo_dir}")
    files = sorted(p.resolve() for p in photo_dir.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    return files


def split_photos(files: Sequence[Path], seed: int, negatives_fraction: float
                 ) -> tuple[list[Path], list[Path]]:
    """(catalogue, negatives), each sorted: a seeded random `negatives_fraction` held out."""
    if not 0 <= negatives_fraction < 1:
        raise ValueError("negatives_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(files))
    n_neg = int(round(negatives_fraction * len(files)))
    neg = {int(i) for i in perm[:n_neg]}
    catalogue = [f for i, f in enumerate(files) if i not in neg]
    negatives = [f for i, f in enumerate(files) if i in neg]
    return catalogue, negatives


def _read_bgr(path: Path) -> np.ndarray | None:
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    return img


def _photo(ctx: _Ctx, i: int) -> np.ndarray:
    img = ctx.images.get(i)
    if img is None:
        img = _read_bgr(ctx.catalogue[i])
        if img is None:
            raise ValueError(f"cannot read {ctx.catalogue[i]}")
        ctx.images[i] = img
    return img


def _phase(ctx: _Ctx, name: str, t0: float) -> None:
    ctx.phases[name] = round(time.perf_counter() - t0, 2)
    ctx.log(f"{name} done in {ctx.phases[name]:.1f}s")


def _build(ctx: _Ctx, out_dir: Path, catalogue: list[Path]) -> dict[str, Any]:
    from echoimage.pipeline import build_index, data_dir_size
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    t0 = time.perf_counter()
    data_dir = ctx.settings.data_dir
    if data_dir.exists():
        shutil.rmtree(data_dir)
    listing = out_dir / "catalogue.txt"
    listing.write_text("".join(f"{p}\n" for p in catalogue))
    ctx.log(f"indexing {len(catalogue)} catalogue photos into {data_dir}")
    with ProcessTreePeak() as peak:
        summary = build_index(ctx.settings, [str(listing)], progress=False)
    indexed = int(summary.counts.get("indexed", 0))
    engine = open_store(ctx.settings)
    with session_factory(engine)() as session:
        known = repo.known_images(session)
        stored = repo.storage_bytes(session)
    engine.dispose()
    disk = data_dir_size(ctx.settings)
    ctx.url_ids = {u: k.id for u, k in known.items() if k.status == "indexed"}
    per = (lambda b: round(b / indexed, 1)) if indexed else (lambda b: None)
    out = {
        "images": len(catalogue), "indexed": indexed, "counts": dict(summary.counts),
        "failures": [{"url": u, "status": s, "reason": r} for u, s, r in summary.failures],
        "seconds": round(summary.seconds, 3),
        "images_per_s": round(indexed / summary.seconds, 2) if summary.seconds else None,
        "cpu_seconds": round(summary.cpu_seconds, 3),
        "cpu_ms_per_image": round(1000 * summary.cpu_seconds / indexed, 2) if indexed else None,
        "workers": ctx.settings.workers or os.cpu_count(),
        "index_entries": summary.index_entries,
        "memory": {"rusage_children_mb": children_peak_rss_mb(), **peak.as_dict()},
        "storage": {
            "store_columns_bytes": stored,
            "store_columns_bytes_per_image": {k: per(v) for k, v in stored.items()
                                              if k != "images"},
            "store_file_bytes": disk.get("store_file"),
            "store_file_bytes_per_image": per(disk["store_file"]) if "store_file" in disk
            else None,
            "index_file_bytes": disk.get("index_files"),
            "index_files": {p.name: p.stat().st_size for p in
                            sorted(ctx.settings.index_dir.glob("*")) if p.is_file()},
            "index_file_bytes_per_image": per(disk.get("index_files", 0)),
        },
    }
    _phase(ctx, "build", t0)
    return out


def _load_hashes(ctx: _Ctx) -> None:
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(ctx.settings)
    with session_factory(engine)() as session:
        ctx.phash_ids, ctx.phash_codes = repo.indexed_hashes(session)
    engine.dispose()
    ctx.id_urls = {i: u for u, i in ctx.url_ids.items()}


def _phash_query(ctx: _Ctx, gray: np.ndarray, truth: str | None
                 ) -> tuple[int | None, int, int]:
    """pHash NN: (rank of truth in top-5, top-1 distance, distance to the truth)."""
    from echoimage.features.hashes import hash_input, phash

    q = phash(hash_input(gray))
    rows, dist = hamming_topk(q, ctx.phash_codes, TOP_K)
    ranked = [ctx.id_urls.get(int(ctx.phash_ids[r]), "") for r in rows]
    truth_dist = -1
    if truth is not None:
        tid = ctx.url_ids[truth]
        row = int(np.searchsorted(ctx.phash_ids, tid))
        x = np.bitwise_xor(ctx.phash_codes[row], np.frombuffer(q, np.uint8))
        truth_dist = int(np.bitwise_count(x).sum())
    rank = rank_of(truth, ranked) if truth is not None else None
    return rank, int(dist[0]) if len(dist) else 64, truth_dist


def _diagnose(ctx: _Ctx, engine: Any, data: bytes, truth: str) -> dict[str, Any]:
    """Why a query missed, from outside the engine: where its original stands in the hash
    shortlist (best of the 8 orientations, as the engine searches) and, when the engine
    has a local-feature index, whether the original gets enough votes. Never raises."""
    try:
        from echoimage.features.decode import decode_image
        from echoimage.features.dihedral import NAMES
        from echoimage.features.hashes import hash_input, oriented_phashes

        s = ctx.settings
        img = decode_image(data, s.max_pixels, getattr(s, "query_work_size", s.work_size))
        oriented = np.frombuffer(b"".join(oriented_phashes(hash_input(img.gray))),
                                 np.uint8).reshape(8, 1, -1)
        dist = np.bitwise_count(np.bitwise_xor(ctx.phash_codes[None], oriented)).sum(axis=2)
        best = dist.min(axis=0)
        row = int(np.searchsorted(ctx.phash_ids, ctx.url_ids[truth]))
        d = int(best[row])
        hash_rank = 1 + int((best < d).sum())
        out: dict[str, Any] = {
            "truth_hash_distance": d, "truth_orientation": NAMES[int(dist[:, row].argmin())],
            "truth_hash_rank": hash_rank,
            "in_hash_rerank": d <= s.max_hash_distance and hash_rank <= s.rerank_n}
        live = getattr(engine, "live", None)
        if live is not None and hasattr(s, "local_params"):
            from echoimage.features.orb import orb_features

            voted = live.snapshot().parts.vote(
                orb_features(img.gray, s.query_orb_features).descriptors, s.local_params,
                getattr(s, "vote_n", 4))
            votes = {v.id: v.votes for v in voted}
            out["truth_votes"] = votes.get(ctx.url_ids[truth], 0)
            out["in_votes"] = out["truth_votes"] >= getattr(s, "min_votes", 1)
        out["reranked"] = bool(out["in_hash_rerank"] or out.get("in_votes"))
        return out
    except Exception as exc:  # diagnosis must never stop the benchmark
        return {"error": f"{type(exc).__name__}: {exc}", "reranked": None}


_DIAG_NOTE = ("shortlist_miss: the original was neither in the hash shortlist's first rerank_n "
              "(within max_hash_distance) nor voted by the local-feature index, so it was "
              "never re-ranked; rerank_miss: it was a candidate but scored below another "
              "image")


def _match_dict(m: Any, truth: str | None = None) -> dict[str, Any]:
    return {"url": Path(m.url).name if not m.url.startswith("synthetic:") else m.url,
            "correct": m.url == truth if truth is not None else None,
            "score": round(m.score, 4), "duplicate": m.duplicate, "ssim": round(m.ssim, 4),
            "orb_matches": m.orb_matches, "orb_inliers": m.orb_inliers,
            "hash_distance": m.hash_distance, "orientation": m.orientation}


def _sweep(ctx: _Ctx, engine: Any, transforms: list[Transform]
           ) -> tuple[list[_QueryRec], dict[str, Any]]:
    """Recall sweep: every query photo under every transform, through query_bytes."""
    from echoimage.features.decode import decode_image

    t0 = time.perf_counter()
    s = ctx.settings
    recs: list[_QueryRec] = []
    failures: dict[str, dict[str, Any]] = {
        t.name: {"shortlist_miss": 0, "rerank_miss": 0, "undiagnosed": 0, "examples": []}
        for t in transforms}
    total = len(ctx.query_photos) * len(transforms)
    tick = ctx.log.loop("recall sweep", total)
    done = 0
    for i in ctx.query_photos:
        img = _photo(ctx, i)
        truth = ctx.urls[i]
        for t in transforms:
            data = make_query(img, t, transform_rng(ctx.seed, i, t.name))
            q0 = time.perf_counter()
            res = engine.query_bytes(data, k=TOP_K)
            e2e = (time.perf_counter() - q0) * 1000
            ranked = [m.url for m in res.matches]
            rank = rank_of(truth, ranked)
            top = res.matches[0] if res.matches else None
            gray = decode_image(data, s.max_pixels, s.work_size).gray
            p_rank, p_top, p_truth = _phash_query(ctx, gray, truth)
            recs.append(_QueryRec(t.name, i, rank, top.score if top else 0.0,
                                  bool(top and top.duplicate), e2e,
                                  p_rank, p_top, p_truth))
            if rank != 1:
                diag = _diagnose(ctx, engine, data, truth)
                f = failures[t.name]
                key = {True: "rerank_miss", False: "shortlist_miss"}.get(diag["reranked"],
                                                                          "undiagnosed")
                f[key] += 1
                f["diagnosis_note"] = _DIAG_NOTE
                if len(f["examples"]) < 3:
                    truth_m = next((m for m in res.matches if m.url == truth), None)
                    f["examples"].append({
                        "photo": ctx.catalogue[i].name, "rank": rank, **diag,
                        "top1": _match_dict(top, truth) if top else None,
                        "truth": _match_dict(truth_m, truth) if truth_m else None})
            done += 1
            tick(done)
        ctx.images.pop(i, None)
    _phase(ctx, "recall_sweep", t0)
    return recs, failures


def _negatives(ctx: _Ctx, engine: Any, negatives: list[Path]) -> dict[str, Any]:
    from echoimage.features.decode import decode_image

    t0 = time.perf_counter()
    s = ctx.settings
    rows: list[dict[str, Any]] = []
    tick = ctx.log.loop("negatives", len(negatives) * len(NEGATIVE_TRANSFORMS))
    for j, path in enumerate(negatives):
        img = _read_bgr(path)
        if img is None:
            continue
        for name in NEGATIVE_TRANSFORMS:
            t = TRANSFORMS[name]
            data = make_query(img, t, transform_rng(ctx.seed, 1_000_000 + j, name))
            res = engine.query_bytes(data, k=TOP_K)
            top = res.matches[0] if res.matches else None
            gray = decode_image(data, s.max_pixels, s.work_size).gray
            _, p_top, _ = _phash_query(ctx, gray, None)
            rows.append({"photo": path.name, "transform": name,
                         "score": top.score if top else 0.0,
                         "duplicate": bool(top and top.duplicate), "phash_top_dist": p_top,
                         "top1": _match_dict(top) if top else None})
            tick(len(rows))
    _phase(ctx, "negatives", t0)
    scores = [r["score"] for r in rows]
    by_t = {}
    for name in NEGATIVE_TRANSFORMS:
        sub = [r for r in rows if r["transform"] == name]
        by_t[name] = {"n": len(sub), "false_match_rate": rate(r["duplicate"] for r in sub),
                      "phash_false_match_rate": rate(r["phash_top_dist"] <= PHASH_THRESHOLD
                                                     for r in sub),
                      "score_quantiles": quantiles([r["score"] for r in sub])}
    worst = sorted(rows, key=lambda r: -r["score"])[:5]
    return {
        "photos": len(negatives), "transforms": list(NEGATIVE_TRANSFORMS), "n": len(rows),
        "false_match_rate": rate(r["duplicate"] for r in rows),
        "phash_false_match_rate": rate(r["phash_top_dist"] <= PHASH_THRESHOLD for r in rows),
        "phash_threshold": PHASH_THRESHOLD,
        "score_quantiles": quantiles(scores, (0, 50, 90, 95, 99, 100)),
        "by_transform": by_t, "highest_scoring": worst, "_scores": scores,
    }


def _latency_sample(ctx: _Ctx, transforms: list[Transform], n: int, extra: bool = False
                    ) -> list[tuple[int, str]]:
    """A seeded sample of (photo, transform) over the main transforms, or the extra ones."""
    pairs = [(i, t.name) for t in transforms if t.extra == extra for i in ctx.query_photos]
    if n >= len(pairs):
        return pairs
    rng = np.random.default_rng([ctx.seed, 0x1A7 + extra])
    pick = sorted(rng.choice(len(pairs), size=n, replace=False).tolist())
    return [pairs[k] for k in pick]


def _time_queries(ctx: _Ctx, engine: Any, sample: list[tuple[int, str, bytes]], label: str
                  ) -> dict[str, Any]:
    """query_image (decoded → results) and query_bytes (end to end) on the sample."""
    from echoimage.features.decode import decode_image

    s = ctx.settings
    for _, _, data in sample[:3]:  # warm-up: caches, lazy imports
        engine.query_bytes(data, k=TOP_K)
    img_ms, bytes_ms, decode_ms, hits = [], [], [], []
    stages: dict[str, list[float]] = {}
    tick = ctx.log.loop(f"latency {label}", len(sample))
    work = getattr(s, "query_work_size", s.work_size)  # what query_bytes decodes with
    for n, (i, _, data) in enumerate(sample, 1):
        d0 = time.perf_counter()
        dec = decode_image(data, s.max_pixels, work)
        d1 = time.perf_counter()
        res = engine.query_image(dec, k=TOP_K, sha256=None)
        d2 = time.perf_counter()
        engine.query_bytes(data, k=TOP_K)
        d3 = time.perf_counter()
        decode_ms.append((d1 - d0) * 1000)
        img_ms.append((d2 - d1) * 1000)
        bytes_ms.append((d3 - d2) * 1000)
        for k, v in res.timings.items():
            stages.setdefault(k, []).append(v)
        hits.append(bool(res.matches) and res.matches[0].url == ctx.urls[i])
        tick(n)
    return {
        "entries": int(engine.size), "queries": len(sample), **_delta_info(engine),
        "recall_at_1": rate(hits),
        "query_image_ms": {"p50": percentile(img_ms, 50), "p95": percentile(img_ms, 95),
                           "mean": float(np.mean(img_ms))},
        "query_bytes_ms": {"p50": percentile(bytes_ms, 50), "p95": percentile(bytes_ms, 95),
                           "mean": float(np.mean(bytes_ms))},
        "decode_ms_p50": percentile(decode_ms, 50),
        "stage_ms_p50": {k: percentile(v, 50) for k, v in stages.items()},
    }


def _delta_info(engine: Any) -> dict[str, Any]:
    """Size of the engine's unindexed catch-up delta (flat-scanned on every query), if any."""
    snap = getattr(engine, "snap", None)
    if snap is None:
        return {}
    delta = getattr(snap, "delta", None)
    local = getattr(snap, "delta_local", None)
    return {"engine_delta_rows": int(delta.ntotal) if delta is not None else 0,
            "engine_delta_descriptors": int(local.ntotal) if local is not None else 0}


def _seed_baseline(ctx: _Ctx, transforms: list[Transform], subset: tuple[int, int]
                   ) -> dict[str, Any]:
    """The seed's brute force: every query against every image of a small catalogue subset."""
    t0 = time.perf_counter()
    n_cat, per_t = subset
    cat_idx = ctx.query_photos[:n_cat]
    if not cat_idx or per_t < 1:
        return {"skipped": True}
    blobs = {i: ctx.catalogue[i].read_bytes() for i in cat_idx}
    rng = np.random.default_rng([ctx.seed, 0x5EED])
    pair_ms: list[float] = []
    per: dict[str, dict[str, Any]] = {}
    tick = ctx.log.loop("seed baseline", len(transforms) * min(per_t, len(cat_idx)))
    done = 0
    for t in transforms:
        chosen = sorted(rng.choice(len(cat_idx), size=min(per_t, len(cat_idx)),
                                   replace=False).tolist())
        ranks = []
        for c in chosen:
            i = cat_idx[c]
            data = make_query(_photo(ctx, i), t, transform_rng(ctx.seed, i, t.name))
            q = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            scores = []
            for j in cat_idx:
                p0 = time.perf_counter()
                cand = cv2.imdecode(np.frombuffer(blobs[j], np.uint8), cv2.IMREAD_COLOR)
                sc = seed_score(q, cand).score
                pair_ms.append((time.perf_counter() - p0) * 1000)
                scores.append((-sc, j))
            scores.sort()
            ranks.append(rank_of(ctx.urls[i], [ctx.urls[j] for _, j in scores[:TOP_K]]))
            done += 1
            tick(done)
        per[t.name] = {"n": len(ranks), "recall_at_1": recall_at_k(ranks, 1),
                       "recall_at_5": recall_at_k(ranks, TOP_K)}
    for i in cat_idx:
        ctx.images.pop(i, None)
    ms = float(np.median(pair_ms)) if pair_ms else None
    _phase(ctx, "seed_baseline", t0)
    return {
        "catalogue_images": len(cat_idx), "queries_per_transform": per_t,
        "pairs": len(pair_ms),
        "ms_per_catalogue_image_per_query": {"p50": ms, "mean": float(np.mean(pair_ms))},
        "extrapolated_s_per_query_at_1m": round(ms * 1e6 / 1000, 0) if ms else None,
        "note": "includes decoding each catalogue JPEG from memory, as the seed re-read "
                "every image per query (no network); resize to 256x256 colour, "
                "skimage SSIM + ORB/FLANN-LSH good-match ratio + 8x8x8 histogram "
                "correlation, averaged",
        "by_transform": per,
    }


@dataclass(frozen=True)
class PaddingJob:
    """What `build_padding` needs (picklable: it runs in its own process)."""

    base_db: Path  # the catalogue store's SQLite file
    pad_root: Path  # one data dir per scale below it: scale-N/
    scales: tuple[int, ...]
    key: str  # fingerprint of catalogue + feature parameters; a cached scale must match
    catalogue_entries: int
    seed: int
    settings: dict[str, Any]  # Settings fields (model_dump)
    workers: int
    progress: bool = True


def padding_key(catalogue_digest: str, probe_digest: str, feature_params: Sequence[int],
                seed: int) -> str:
    """Fingerprint of a padded store: what its rows were made from.

    The catalogue digest covers the catalogue rows copied into it, the probe digest the
    features the current code extracts from synthetic images; either changes when feature
    code changes. The schema revision is not part of it: `open_store` migrates a cached
    copy like any other store (and the engine rebuilds indexes it finds stale).
    """
    h = hashlib.sha256()
    h.update(json.dumps({"pad_version": PAD_VERSION, "seed": seed, "size": PAD_SIZE,
                         "features": list(feature_params), "catalogue": catalogue_digest,
                         "probe": probe_digest}).encode())
    return h.hexdigest()


def features_digest(feats: Iterable[Any]) -> str:
    """Digest of feature sets (thumbnail, ORB keypoints and descriptors, pHash if any)."""
    h = hashlib.sha256()
    for f in feats:
        for part in (f.thumbnail, f.orb.keypoints, f.orb.descriptors):
            h.update(np.ascontiguousarray(part).tobytes())
        h.update(getattr(f, "phash", b"") or b"")
    return h.hexdigest()


def _probe_digest(settings: Any, seed: int) -> str:
    """Features the current code extracts from the first synthetic padding images."""
    from echoimage.pipeline import feature_params

    params = feature_params(settings)
    return features_digest(_pad_features((i, seed, params))[3] for i in range(2))


def _catalogue_digest(settings: Any) -> str:
    """URLs and stored features of every indexed catalogue image, by id."""
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(settings)
    try:
        with session_factory(engine)() as session:
            ids, _ = repo.indexed_hashes(session)
            cands = repo.candidates(session, [int(i) for i in ids])
    finally:
        engine.dispose()
    ordered = [cands[int(i)] for i in ids if int(i) in cands]
    urls = hashlib.sha256("\0".join(c.url for c in ordered).encode()).hexdigest()
    return urls + features_digest(ordered)


def read_padding_meta(scale_dir: Path) -> dict[str, Any] | None:
    """The pad.json of a padded data dir, or None."""
    try:
        return json.loads((scale_dir / "pad.json").read_text())
    except (OSError, ValueError):
        return None


def padding_cached(job: PaddingJob, scale: int) -> bool:
    """True when pad_root/scale-N holds a complete padded store for this job's key."""
    d = job.pad_root / f"scale-{scale}"
    meta = read_padding_meta(d)
    return bool(meta and meta.get("key") == job.key and meta.get("complete")
                and meta.get("settled", True) and (d / "echoimage.sqlite3").exists())


def build_padding(job: PaddingJob) -> dict[int, dict[str, Any]]:
    """Pad copies of the catalogue store to each scale with synthetic entries.

    Each scale gets a data dir (SQLite store + both shortlist indexes) under
    ``job.pad_root/scale-N``. Entries are `synthetic_image` renders (never photos) run through
    `decode_image` + `extract_features` in a forkserver pool and inserted with
    `repo.add_pending` + `repo.save_features`, 1000 per transaction; then `rebuild_index_files`.
    A larger scale starts from a copy of the next smaller one (synthetic entry i is the
    same at every scale). Complete scales are recorded in ``pad.json`` and reused by later
    runs with the same key.
    """
    from echoimage.config import Settings
    from echoimage.index.build import rebuild_index_files
    from echoimage.pipeline import feature_params
    from echoimage.store import repo
    from echoimage.store.db import head_revision, open_store, session_factory
    from echoimage.types import CatalogueItem

    log = _Log(job.progress, "bench pad")
    base = Settings(**job.settings)
    params = feature_params(base)
    info: dict[int, dict[str, Any]] = {}
    pool = None
    prev: tuple[Path, int] | None = None  # (db, padding rows) of the last complete scale
    try:
        for scale in sorted(job.scales):
            d = job.pad_root / f"scale-{scale}"
            db = d / "echoimage.sqlite3"
            target = scale - job.catalogue_entries
            if target <= 0:
                continue
            if padding_cached(job, scale):
                meta = read_padding_meta(d) or {}
                log(f"{scale:,}: cached in {d}")
                info[scale] = {**meta, "cached": True}
                prev = (db, target)
                continue
            t0 = time.perf_counter()
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            src, start = prev if prev else (job.base_db, 0)
            copy_sqlite(src, db)
            t_copy = time.perf_counter() - t0
            settings = base.model_copy(update={"data_dir": d})
            engine = open_store(settings)
            sessions = session_factory(engine)
            with sessions.begin() as session:
                sid = repo.source_id(session, PAD_SOURCE, "synthetic")
            if pool is None:
                mp = multiprocessing.get_context("forkserver")
                pool = mp.Pool(job.workers, initializer=_pad_init)
            log(f"{scale:,}: {target - start:,} synthetic images ({start:,} copied from "
                f"{src.parent.name}), {job.workers} workers")
            cpu = 0.0
            tick = log.loop(f"padding {scale:,}", target - start)
            done = 0
            with ProcessTreePeak() as peak:
                for batch in _pad_batches(pool, range(start, target), job.seed, params):
                    with sessions.begin() as session:
                        items = [CatalogueItem(pad_url(r[0]), PAD_SOURCE) for r in batch]
                        repo.add_pending(session, items, sid)
                        known = repo.known_images(session, [it.url for it in items])
                        for index, sha, nbytes, feats, cpu_s in batch:
                            row_id = known[pad_url(index)].id
                            repo.save_features(session, row_id, sha, nbytes, feats)
                            cpu += cpu_s
                    done += len(batch)
                    tick(done)
            t_rows = time.perf_counter()
            with sessions() as session:
                count = repo.store_state(session).count
            report = rebuild_index_files(settings, engine, "padded store")
            engine.dispose()
            t_end = time.perf_counter()
            generated = max(1, target - start)
            meta = {
                "key": job.key, "complete": True, "scale": scale, "entries": count,
                "schema_revision": head_revision(),
                "catalogue_entries": job.catalogue_entries, "padding_entries": target,
                "generated_this_build": target - start,
                "seconds": round(t_end - t0, 2), "copy_seconds": round(t_copy, 2),
                "rows_seconds": round(t_rows - t0 - t_copy, 2),
                "index_rebuild_seconds": round(t_end - t_rows, 2),
                "index_entries": report.images,
                "ms_per_padding_image": round(1000 * (t_rows - t0 - t_copy) / generated, 3),
                "worker_cpu_ms_per_image": round(1000 * cpu / generated, 3),
                "workers": job.workers,
                "memory": {"inserter_peak_rss_mb": self_peak_rss_mb(), **peak.as_dict()},
                "store_file_bytes": sum(p.stat().st_size for p in d.glob("echoimage*")),
                "synthetic": f"procedural {PAD_SIZE[0]}x{PAD_SIZE[1]} grayscale images "
                             "(gradient, texture, shapes, lines, noise); not photos",
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (d / "pad.json").write_text(json.dumps(meta, indent=2))
            info[scale] = {**meta, "cached": False}
            log(f"{scale:,} done: {count:,} entries in {t_end - t0:.0f}s (rows "
                f"{meta['rows_seconds']:.0f}s, index {meta['index_rebuild_seconds']:.0f}s)")
            prev = (db, target)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return info


def _padding_process(job: PaddingJob) -> None:
    """Entry point of the background padding process."""
    import signal

    # terminate() from the parent: unwind, so the pool's workers are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cv2.setNumThreads(1)
    build_padding(job)


def _pad_batches(pool: Any, indices: range, seed: int, params: tuple[int, int, int, int],
                 batch: int = 1000) -> Iterator[list[tuple]]:
    """Worker results in order, `batch` at a time, with at most two batches in flight."""
    blocks = [range(b, min(b + batch, indices.stop))
              for b in range(indices.start, indices.stop, batch)]
    pending: deque = deque()
    it = iter(blocks)

    def submit() -> None:
        blk = next(it, None)
        if blk is not None:
            pending.append(pool.imap(_pad_features, [(i, seed, params) for i in blk],
                                     chunksize=16))

    submit()
    submit()
    while pending:
        results = list(pending.popleft())
        submit()
        yield results


def _padding_job(ctx: _Ctx, out_dir: Path, scales: Sequence[int], workers: int | None,
                 progress: bool) -> PaddingJob:
    from echoimage.pipeline import feature_params

    key = padding_key(_catalogue_digest(ctx.settings), _probe_digest(ctx.settings, ctx.seed),
                      feature_params(ctx.settings), ctx.seed)
    return PaddingJob(
        base_db=ctx.settings.data_dir / "echoimage.sqlite3", pad_root=out_dir / "pad",
        scales=tuple(sorted(s for s in scales if s > len(ctx.url_ids))),
        key=key,
        catalogue_entries=len(ctx.url_ids), seed=ctx.seed,
        settings=ctx.settings.model_dump(), workers=workers or os.cpu_count() or 1,
        progress=progress)


def _scale(ctx: _Ctx, job: PaddingJob, scales: Sequence[int],
           sample: list[tuple[int, str, bytes]], parts: list[tuple[int, str, bytes]],
           built: dict[str, Any]) -> dict[str, Any]:
    """Time the latency samples (main transforms; parts of photos) on each padded store
    (padding must be complete)."""
    from echoimage.search.engine import SearchEngine
    from echoimage.store.db import open_store

    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for scale in scales:
        if scale not in job.scales:
            out[str(scale)] = {"skipped": f"scale {scale} is not above the catalogue size"}
            continue
        d = job.pad_root / f"scale-{scale}"
        meta = read_padding_meta(d)
        if meta is None or meta.get("key") != job.key or not meta.get("complete"):
            out[str(scale)] = {"skipped": "padding did not complete (see the log)"}
            continue
        settings = ctx.settings.model_copy(update={"data_dir": d})
        engine = open_store(settings)
        l0 = time.perf_counter()
        try:
            search = SearchEngine(settings, engine)  # rebuilds the indexes if they are stale
            load_s = time.perf_counter() - l0
            ctx.log(f"scale {scale:,}: engine loaded ({search.size:,} entries, {load_s:.1f}s"
                    f"{'; its indexes were stale and rebuilt' if load_s > 5 else ''}); "
                    f"timing {len(sample)} queries")
            res = _time_queries(ctx, search, sample, f"{scale:,}")
            if parts:
                res["parts"] = _time_queries(ctx, search, parts, f"{scale:,} parts")
        except Exception as exc:  # one broken scale must not lose the whole run
            ctx.log(f"scale {scale:,}: failed: {type(exc).__name__}: {exc}")
            out[str(scale)] = {"skipped": f"engine failed at this scale: "
                                          f"{type(exc).__name__}: {exc}",
                               "seconds": round(time.perf_counter() - l0, 2),
                               "padding": meta}
            continue
        finally:
            engine.dispose()
        meta = {**meta, "cached": scale not in built.get("built_scales", []),
                "built_concurrently_with": built.get("concurrent_with")}
        out[str(scale)] = {**res, "engine_load_seconds": round(load_s, 3),
                           "index_file_bytes": sum(p.stat().st_size for p in
                                                   settings.index_dir.glob("*")),
                           "padding": meta}
    _phase(ctx, "scale", t0)
    return out


def _per_transform(recs: list[_QueryRec], transforms: list[Transform], thr: float | None
                   ) -> dict[str, dict[str, Any]]:
    out = {}
    for t in transforms:
        sub = [r for r in recs if r.transform == t.name]
        out[t.name] = _summarise(sub, thr)
        out[t.name].update({"extra": t.extra, "quality": t.quality,
                            "description": t.description})
    return out


def _summarise(sub: list[_QueryRec], thr: float | None) -> dict[str, Any]:
    ranks = [r.rank for r in sub]
    hits = [r for r in sub if r.rank == 1]
    return {
        "n": len(sub),
        "echoimage": {
            "recall_at_1": recall_at_k(ranks, 1), "recall_at_5": recall_at_k(ranks, TOP_K),
            "duplicate_given_top1_correct": rate(r.top_dup for r in hits),
            "detected": rate(r.rank == 1 and r.top_dup for r in sub),
            "recall_at_calibrated_threshold": rate(r.rank == 1 and r.top_score >= thr
                                                   for r in sub) if thr is not None else None,
            "correct_top1_score": quantiles([r.top_score for r in hits]),
            "query_bytes_ms_p50": percentile([r.e2e_ms for r in sub], 50),
        },
        "phash": {
            "recall_at_1": recall_at_k([r.phash_rank for r in sub], 1),
            "recall_at_5": recall_at_k([r.phash_rank for r in sub], TOP_K),
            "detected_at_threshold": rate(r.phash_rank == 1 and r.phash_top_dist
                                          <= PHASH_THRESHOLD for r in sub),
            "truth_distance": quantiles([r.phash_truth_dist for r in sub], (0, 50, 95, 100)),
        },
    }


def _phash_latency(ctx: _Ctx, sample: list[tuple[int, str, bytes]]) -> dict[str, Any]:
    from echoimage.features.decode import decode_image

    s = ctx.settings
    ms = []
    for _, _, data in sample:
        gray = decode_image(data, s.max_pixels, s.work_size).gray
        t0 = time.perf_counter()
        _phash_query(ctx, gray, None)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"entries": int(len(ctx.phash_codes)), "query_ms_p50": percentile(ms, 50),
            "query_ms_p95": percentile(ms, 95),
            "note": "from the decoded image: 32x32 hash input, pHash, numpy Hamming scan, "
                    "top-5"}


def run_benchmark(photo_dir: str | Path, out_dir: str | Path, *, limit: int | None = None,
                  seed: int = 0, scale: Sequence[int] = (10_000, 100_000),
                  seed_subset: tuple[int, int] = (40, 3), negatives_fraction: float = 0.2,
                  latency_queries: int = 200, workers: int | None = None,
                  background_padding: bool = True, progress: bool = True,
                  command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the copy-detection benchmark on a folder of photos; write bench.json and bench.md.

    Args:
        photo_dir: folder of photos (searched recursively). They are read, never copied.
        out_dir: where the run writes: ``data/`` (a fresh store, rebuilt every run),
            ``catalogue.txt``, ``pad/scale-N/`` (padded stores, cached across runs),
            ``bench.json`` and ``bench.md``.
        limit: query only this many catalogue photos (a seeded subset); None queries all.
        seed: seeds the catalogue/negative split, the query subset, the random transforms
            and the synthetic padding.
        scale: store sizes to pad to and re-time (values not above the catalogue size are
            skipped); empty to skip the scale phase.
        seed_subset: (catalogue images, queries per transform) of the seed's brute force.
        negatives_fraction: fraction of the photos held out of the catalogue as negatives.
        latency_queries: size of the fixed query sample timed at every scale.
        workers: processes of the padding pool (default: CPU count); the build uses
            Settings.workers.
        background_padding: build missing padding in a separate process while the recall
            sweep runs (the sweep's own timings are then taken under load; the latency
            figures come from a quiet phase either way). False pads after the sweep.
        progress: progress lines on stderr.
        command: the command line to record (default: sys.argv).

    Returns:
        The JSON-ready result (also written to ``out_dir/bench.json``).
    """
    from echoimage.config import Settings
    from echoimage.search.engine import SearchEngine

    photo_dir, out_dir = Path(photo_dir), Path(out_dir)
    if limit is not None and limit < 1:
        raise ValueError("limit must be positive")
    if seed_subset[0] < 0 or seed_subset[1] < 0:
        raise ValueError("seed_subset values must be >= 0")
    if any(s < 1 for s in scale):
        raise ValueError("scale values must be positive")
    log = _Log(progress)
    machine = _machine()
    started = datetime.now(UTC)
    t_all = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _list_photos(photo_dir)
    if len(files) < 2:
        raise ValueError(f"{photo_dir} holds {len(files)} photos; at least 2 are needed")
    catalogue, negatives = split_photos(files, seed, negatives_fraction)
    settings = Settings(data_dir=out_dir / "data", database_url=None)
    ctx = _Ctx(log=log, seed=seed, settings=settings, catalogue=catalogue,
               urls=[str(p) for p in catalogue], url_ids={}, query_photos=[])
    log(f"{len(files)} photos: {len(catalogue)} catalogue, {len(negatives)} negatives")

    build = _build(ctx, out_dir, catalogue)
    _load_hashes(ctx)
    indexed = [i for i, u in enumerate(ctx.urls) if u in ctx.url_ids]
    if not indexed:
        raise ValueError("no catalogue photo could be indexed")
    if limit is not None and limit < len(indexed):
        rng = np.random.default_rng([seed, 0x11A])
        indexed = sorted(rng.choice(indexed, size=limit, replace=False).tolist())
    ctx.query_photos = indexed
    transforms = list(TRANSFORMS.values())

    job = _padding_job(ctx, out_dir, scale, workers, progress) if scale else None
    todo = [s for s in job.scales if not padding_cached(job, s)] if job else []
    pad_proc = None
    pad_info: dict[str, Any] = {"built_scales": todo, "concurrent_with": None}
    engine = SearchEngine(settings)
    try:
        if todo and background_padding:
            mp = multiprocessing.get_context("forkserver")
            pad_proc = mp.Process(target=_padding_process, args=(job,),
                                  name="echoimage-bench-padding")
            pad_t0 = time.perf_counter()
            pad_proc.start()
            pad_info["concurrent_with"] = "recall sweep and negatives"
            log(f"padding {', '.join(f'{s:,}' for s in todo)} in a background process "
                f"(pid {pad_proc.pid}) while the recall sweep runs")
        recs, failures = _sweep(ctx, engine, transforms)
        neg = _negatives(ctx, engine, negatives)
        if pad_proc is not None:
            w0 = time.perf_counter()
            log("waiting for the padding process")
            pad_proc.join()
            ctx.phases["padding_wait"] = round(time.perf_counter() - w0, 2)
            ctx.phases["padding_wall"] = round(time.perf_counter() - pad_t0, 2)
            if pad_proc.exitcode != 0:
                log(f"padding process failed (exit code {pad_proc.exitcode})")
            pad_proc = None
    finally:
        if pad_proc is not None and pad_proc.is_alive():
            pad_proc.terminate()
            pad_proc.join()
    neg_scores = neg.pop("_scores")
    thr = threshold_at_fmr(neg_scores, TARGET_FMR)

    t0 = time.perf_counter()
    samples = [[(i, name, make_query(_photo(ctx, i), TRANSFORMS[name],
                                     transform_rng(seed, i, name))) for i, name in pairs]
               for pairs in (_latency_sample(ctx, transforms, latency_queries),
                             _latency_sample(ctx, transforms, latency_queries // 2, True))]
    sample, parts = samples
    ctx.images.clear()
    latency = {"catalogue": _time_queries(ctx, engine, sample, "catalogue")}
    if parts:
        latency["catalogue"]["parts"] = _time_queries(ctx, engine, parts, "catalogue parts")
    phash_latency = _phash_latency(ctx, sample)
    _phase(ctx, "latency", t0)
    engine.engine.dispose()
    rss_before_scale = self_peak_rss_mb()

    seed_res = _seed_baseline(ctx, transforms, seed_subset)
    scale_res: dict[str, Any] = {}
    if job is not None:
        if todo and not background_padding:
            t0 = time.perf_counter()
            build_padding(job)
            ctx.phases["padding_wall"] = round(time.perf_counter() - t0, 2)
        scale_res = _scale(ctx, job, list(scale), sample, parts, pad_info)
    latency.update({k: v for k, v in scale_res.items() if "skipped" not in v})

    per_t = _per_transform(recs, transforms, thr)
    for name, r in per_t.items():
        r["seed"] = (seed_res.get("by_transform") or {}).get(name)
        r["failures"] = failures[name]
    main = [r for r in recs if not TRANSFORMS[r.transform].extra]
    extra = [r for r in recs if TRANSFORMS[r.transform].extra]
    s_main = _summarise(main, thr)
    cal = {
        "target_false_match_rate": TARGET_FMR,
        "threshold": thr,
        "negatives": len(neg_scores),
        "false_match_rate_at_threshold": rate(s >= thr for s in neg_scores)
        if thr is not None else None,
        "recall_at_threshold_main": s_main["echoimage"]["recall_at_calibrated_threshold"],
        "recall_at_threshold_by_transform": {
            k: v["echoimage"]["recall_at_calibrated_threshold"] for k, v in per_t.items()},
        "zero_false_match_threshold": just_above(max(neg_scores)) if neg_scores else None,
        "current_duplicate_threshold": settings.duplicate_threshold,
        "false_match_rate_at_current": neg["false_match_rate"],
        "detected_at_current_main": s_main["echoimage"]["detected"],
        "negative_score_quantiles": neg["score_quantiles"],
    }
    cal["sweep"] = [
        {"threshold": t, "false_match_rate": rate(x >= t for x in neg_scores),
         "recall_main": rate(r.rank == 1 and r.top_score >= t for r in main),
         "recall_extra": rate(r.rank == 1 and r.top_score >= t for r in extra)}
        for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    if cal["zero_false_match_threshold"] is not None:
        z = cal["zero_false_match_threshold"]
        cal["recall_at_zero_false_match_main"] = rate(r.rank == 1 and r.top_score >= z
                                                      for r in main)
    result: dict[str, Any] = {
        "version": BENCH_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "command": list(command) if command is not None else list(sys.argv),
        "machine": machine,
        "params": {"photo_dir": str(photo_dir.resolve()), "out_dir": str(out_dir.resolve()),
                   "limit": limit, "seed": seed, "scale": list(scale),
                   "seed_subset": list(seed_subset), "negatives_fraction": negatives_fraction,
                   "latency_queries": latency_queries, "query_jpeg_quality": QUERY_QUALITY,
                   "k": TOP_K,
                   "settings": settings.model_dump(mode="json", exclude={"database_url"})},
        "dataset": {"photos": len(files), "catalogue": len(catalogue),
                    "negatives": len(negatives), "indexed": len(ctx.url_ids),
                    "query_photos": len(ctx.query_photos),
                    "queries": len(recs), "transforms": len(transforms)},
        "build": build,
        "transforms": per_t,
        "summary": {"main": s_main, "extra": _summarise(extra, thr)},
        "negatives": neg,
        "calibration": cal,
        "latency": latency,
        "scale": scale_res,
        "baselines": {"phash": {**phash_latency, "threshold": PHASH_THRESHOLD,
                                "false_match_rate": neg["phash_false_match_rate"],
                                "recall_at_1_main": s_main["phash"]["recall_at_1"],
                                "recall_at_5_main": s_main["phash"]["recall_at_5"]},
                      "seed": seed_res},
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "memory": {"self_peak_rss_mb": self_peak_rss_mb(),
                   "self_peak_rss_mb_before_scale": rss_before_scale,
                   "build_children": build["memory"]},
        "phases": {**ctx.phases, "total": round(time.perf_counter() - t_all, 2)},
        "notes": _notes(pad_info, scale_res),
    }
    result = _jsonable(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / "bench.md").write_text(render_markdown(result))
    log(f"done in {result['phases']['total']:.0f}s: {out_dir / 'bench.json'}, "
        f"{out_dir / 'bench.md'}")
    return result


def _notes(pad_info: dict[str, Any], scale_res: dict[str, Any]) -> list[str]:
    notes = ["Latency figures come from a quiet phase: decode_image, then query_image "
             "(sha256=None) timed alone; query_bytes timed end to end on the same sample."]
    if any("padding" in v for v in scale_res.values()):
        notes.append("Padding entries are synthetic: procedural images (gradient, texture, "
                     "shapes, noise) run through decode_image + extract_features and stored "
                     "as real rows; they are not photos.")
    if pad_info.get("concurrent_with"):
        notes.append("Padding was built in a background process during the recall sweep "
                     "and negatives, so their per-query times (query_bytes_ms_p50 per "
                     "transform) were taken under load.")
    return notes


def _jsonable(x: Any) -> Any:
    """Round floats, turn numpy scalars and non-finite floats into JSON values."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    return x


# --------------------------------------------------------------------------- report


def render_markdown(result: dict[str, Any]) -> str:
    """The benchmark's markdown report: the per-transform table and summary lines."""
    d = result["dataset"]
    rows = []
    for name, r in result["transforms"].items():
        seed = r.get("seed") or {}
        seed_cell = (f"{fmt_rate(seed.get('recall_at_1'), 2)} ({seed['n']})" if seed
                     else "—")
        rows.append([name + (" (extra)" if r["extra"] else ""), r["n"],
                     fmt_rate(r["echoimage"]["recall_at_1"]),
                     fmt_rate(r["echoimage"]["recall_at_5"]),
                     fmt_rate(r["echoimage"]["duplicate_given_top1_correct"]),
                     fmt_rate(r["echoimage"]["recall_at_calibrated_threshold"]),
                     fmt_rate(r["phash"]["recall_at_1"]), fmt_rate(r["phash"]["recall_at_5"]),
                     seed_cell])
    for label, key in (("**all main**", "main"), ("**all extra**", "extra")):
        s = result["summary"][key]
        if s["n"]:
            rows.append([label, s["n"], fmt_rate(s["echoimage"]["recall_at_1"]),
                         fmt_rate(s["echoimage"]["recall_at_5"]),
                         fmt_rate(s["echoimage"]["duplicate_given_top1_correct"]),
                         fmt_rate(s["echoimage"]["recall_at_calibrated_threshold"]),
                         fmt_rate(s["phash"]["recall_at_1"]),
                         fmt_rate(s["phash"]["recall_at_5"]), ""])
    table = markdown_table(
        ["transform", "queries", "EchoImage r@1", "EchoImage r@5", "dup=True of r@1 hits",
         "r@1 at calibrated thr", "pHash r@1", "pHash r@5", "seed r@1 (subset n)"], rows)
    b, neg, cal = result["build"], result["negatives"], result["calibration"]
    st = b["storage"]
    lat = result["latency"]
    seed = result["baselines"]["seed"]
    ph = result["baselines"]["phash"]
    lines = [
        "# EchoImage benchmark", "",
        f"{result['date']} · `{' '.join(result['command'])}` · "
        f"{result['machine']['cpu_count']} CPUs, Python {result['machine']['python']}, "
        f"OpenCV {result['machine']['opencv']}, FAISS {result['machine']['faiss']}", "",
        f"Photos: {d['photos']} → catalogue {d['catalogue']} (indexed {d['indexed']}), "
        f"negatives {d['negatives']}. Queries: {d['query_photos']} catalogue photos × "
        f"{d['transforms']} transforms = {d['queries']}, JPEG q90 (jpeg30: q30, combo: q50), "
        "k=5. \"(extra)\" rows show a part of the photo (random crops, a screenshot); they "
        "are summarised apart and left out of the threshold calibration.", "",
        table, "",
        "## Summary", "",
        f"- **False-match rate** (negatives × {', '.join(neg['transforms'])}; top-1 "
        f"duplicate=True at threshold {cal['current_duplicate_threshold']}): "
        f"{fmt_rate(neg['false_match_rate'])} (n={neg['n']}); pHash (distance ≤ "
        f"{ph['threshold']}): {fmt_rate(ph['false_match_rate'])}",
        f"- **Build**: {b['indexed']} images in {b['seconds']:.1f}s = "
        f"{b['images_per_s']} images/s; CPU {b['cpu_seconds']:.1f}s "
        f"({b['cpu_ms_per_image']} ms/image, {b['workers']} workers)",
        f"- **Bytes per indexed image**: store file {_fmt_b(st['store_file_bytes_per_image'])}"
        f"; feature columns {_fmt_b(sum(st['store_columns_bytes_per_image'].values()))} ("
        + ", ".join(f"{k} {_fmt_b(v)}" for k, v in st["store_columns_bytes_per_image"].items())
        + f"); FAISS index files {_fmt_b(st['index_file_bytes_per_image'])}"
        + (" (" + ", ".join(f"{k} {_fmt_b(v / b['indexed'])}"
                            for k, v in st["index_files"].items() if not k.endswith(".json"))
           + ")" if st.get("index_files") and b["indexed"] else ""),
    ]
    for label, r in lat.items():
        name = f"catalogue ({r['entries']:,})" if label == "catalogue" else \
            f"{int(label):,} (padded, {r['entries']:,} entries)"
        lines.append(
            f"- **Latency @ {name}**, {r['queries']} queries: query_image p50 "
            f"{fmt_ms(r['query_image_ms']['p50'])} / p95 {fmt_ms(r['query_image_ms']['p95'])}; "
            f"query_bytes p50 {fmt_ms(r['query_bytes_ms']['p50'])} / p95 "
            f"{fmt_ms(r['query_bytes_ms']['p95'])}; r@1 on the sample "
            f"{fmt_rate(r['recall_at_1'])}; stage p50 "
            + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in
                        r.get("stage_ms_p50", {}).items() if v is not None) + " ms"
            + (f"; engine catch-up delta {r['engine_delta_rows']:,} rows"
               if r.get("engine_delta_rows") else ""))
        if r.get("parts"):
            q = r["parts"]
            lines.append(
                f"  - parts of photos (extra transforms), {q['queries']} queries: query_image "
                f"p50 {fmt_ms(q['query_image_ms']['p50'])} / p95 "
                f"{fmt_ms(q['query_image_ms']['p95'])}; r@1 on the sample "
                f"{fmt_rate(q['recall_at_1'])}")
    for label, r in result["scale"].items():
        if "skipped" in r or "padding" not in r:
            lines.append(f"- **Scale {label}**: {r.get('skipped')}")
            continue
        p = r["padding"]
        how = "cached from an earlier run" if p["cached"] else "built this run" + (
            f", concurrently with the {p['built_concurrently_with']}"
            if p.get("built_concurrently_with") else "")
        lines.append(
            f"- **Padding to {int(label):,}**: {p['padding_entries']:,} synthetic entries "
            f"(procedural {p['synthetic'].split()[1]} images, not photos; real rows and "
            f"features), {how}: {p['seconds']:.0f}s for {p['generated_this_build']:,} "
            f"({p['ms_per_padding_image']} ms/image wall, {p['worker_cpu_ms_per_image']} ms "
            f"worker CPU) + index rebuild {p['index_rebuild_seconds']:.1f}s; engine load "
            f"{r['engine_load_seconds']:.1f}s; store file {p['store_file_bytes'] / 1e9:.2f} GB")
    m = result["memory"]
    bc = m["build_children"]
    lines += [
        f"- **Peak RSS**: this process {m['self_peak_rss_mb']} MB "
        f"({m['self_peak_rss_mb_before_scale']} MB before the scale phase); build workers "
        f"{bc['max_single_child_mb']} MB each at most, {bc['max_children_total_mb']} MB "
        f"together (ru_maxrss of children: {bc['rusage_children_mb']} MB)",
        f"- **pHash NN baseline**: {ph['entries']} stored hashes, identity orientation, "
        f"p50 {fmt_ms(ph['query_ms_p50'])} per query from the decoded image",
    ]
    if not seed.get("skipped"):
        sm = seed["ms_per_catalogue_image_per_query"]["p50"]
        lines.append(
            f"- **Seed brute force** ({seed['catalogue_images']} catalogue images × "
            f"{seed['queries_per_transform']} queries per transform): {sm:.1f} ms per "
            f"catalogue image per query → ≈ {seed['extrapolated_s_per_query_at_1m']:,.0f} s "
            f"(≈ {seed['extrapolated_s_per_query_at_1m'] / 3600:.1f} h) per query at 1M "
            "images, before any download")
    nq = cal["negative_score_quantiles"] or {}
    lines += ["", "## Calibration", "",
              "- Negatives' top-1 score quantiles: "
              + ", ".join(f"{k} {v:.3f}" for k, v in nq.items()),
              f"- Threshold keeping false matches ≤ {cal['target_false_match_rate']:.0%}: "
              f"**{_fmt_thr(cal['threshold'])}** (FMR there "
              f"{fmt_rate(cal['false_match_rate_at_threshold'])}); recall (top-1 correct and "
              f"score ≥ threshold) over main transforms: "
              f"**{fmt_rate(cal['recall_at_threshold_main'])}**",
              f"- Zero-false-match threshold {_fmt_thr(cal['zero_false_match_threshold'])}: "
              f"recall {fmt_rate(cal.get('recall_at_zero_false_match_main'))}",
              f"- Current `duplicate_threshold` {cal['current_duplicate_threshold']}: FMR "
              f"{fmt_rate(cal['false_match_rate_at_current'])}, main-transform detection "
              f"(top-1 correct and duplicate=True) {fmt_rate(cal['detected_at_current_main'])}",
              "", *_sweep_table(cal.get("sweep") or []),
              "", "## Misses", "", *_miss_lines(result),
              "", "## Notes", "", *[f"- {n}" for n in result.get("notes", [])],
              "", "## Phases", "",
              ", ".join(f"{k} {v:.0f}s" for k, v in result["phases"].items()), ""]
    return "\n".join(lines)


def _miss_lines(result: dict[str, Any]) -> list[str]:
    """One line per transform with misses: where the original was lost, and an example."""
    out = []
    for name, r in result["transforms"].items():
        f = r.get("failures") or {}
        n_miss = f.get("shortlist_miss", 0) + f.get("rerank_miss", 0) + f.get("undiagnosed", 0)
        if not n_miss:
            continue
        line = (f"- {name}: {n_miss} of {r['n']} top-1 misses; never re-ranked "
                f"{f.get('shortlist_miss', 0)}, re-ranked but outscored {f.get('rerank_miss', 0)}")
        ex = next((e for e in f.get("examples", []) if e.get("top1")), None)
        if ex:
            t1, tr = ex["top1"], ex.get("truth")
            line += (f". E.g. {ex['photo']}: original at hash distance "
                     f"{ex.get('truth_hash_distance')} (hash rank {ex.get('truth_hash_rank')}"
                     f", {ex.get('truth_votes', '—')} votes); top-1 {t1['url']} score "
                     f"{t1['score']:.2f} (ssim {t1['ssim']:.2f}, {t1['orb_inliers']} inliers, "
                     f"hash {t1['hash_distance']})")
            if tr:
                line += (f"; original ranked {ex['rank']} with score {tr['score']:.2f} "
                         f"(ssim {tr['ssim']:.2f}, {tr['orb_inliers']} inliers)")
        out.append(line)
    return out or ["- none"]


def _fmt_b(n: float | None) -> str:
    return "—" if n is None else f"{n:,.0f} B"


def _sweep_table(sweep: list[dict[str, Any]]) -> list[str]:
    if not sweep:
        return []
    rows = [[f"{r['threshold']:.2f}", fmt_rate(r["false_match_rate"]),
             fmt_rate(r["recall_main"]), fmt_rate(r["recall_extra"])] for r in sweep]
    return ["Verdict at other thresholds (score >= threshold; recall = top-1 correct and "
            "over the threshold):", "",
            markdown_table(["threshold", "false-match rate", "recall main", "recall extra"],
                           rows)]


def _fmt_thr(t: float | None) -> str:
    return "—" if t is None else f"{t:.4f}"
