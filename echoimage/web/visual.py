"""Pure drawing for the results page: the query and a match side by side, matched keypoints
joined by lines and the matched region outlined on the catalogue image. Arrays in, arrays out;
`encode_png` turns the drawing into bytes.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

BACKGROUND = 255
REGION_BGR = (0, 140, 255)  # orange


def _palette(n: int = 12) -> tuple[tuple[int, int, int], ...]:
    """n well-separated saturated BGR colours for the match lines."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / n, 0.85, 0.8)
        out.append((int(255 * b), int(255 * g), int(255 * r)))
    return tuple(out)


_PALETTE = _palette()


def restore_aspect(thumb: np.ndarray, width: int, height: int, longest: int) -> np.ndarray:
    """Stretch a square thumbnail back to a width x height image whose longest side is longest.

    Catalogue thumbnails are stored square (aspect ignored); this undoes that for display.
    """
    if thumb.ndim != 2:
        raise ValueError("restore_aspect expects a 2-D grayscale thumbnail")
    if width <= 0 or height <= 0 or longest < 1:
        raise ValueError("width, height and longest must be positive")
    f = longest / max(width, height)
    size = (max(1, round(width * f)), max(1, round(height * f)))
    interp = cv2.INTER_AREA if max(size) <= max(thumb.shape) else cv2.INTER_CUBIC
    return cv2.resize(thumb, size, interpolation=interp)


def colourise(gray: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    """gray (2-D uint8) in the colours of rgb, a smaller RGB version of the same picture,
    as BGR: gray's detail as luma, rgb's chroma stretched to gray's size (what JPEG's
    chroma subsampling does). Without rgb, gray as it is."""
    if gray.ndim != 2:
        raise ValueError("colourise expects a 2-D grayscale image")
    if rgb is None:
        return gray
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("colourise expects an RGB HxWx3 colour version")
    big = cv2.resize(rgb, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    ycc = cv2.cvtColor(big, cv2.COLOR_RGB2YCrCb)
    ycc[:, :, 0] = gray
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


def _fit(img: np.ndarray, height: int, max_width: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    f = min(height / h, max_width / w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    out = cv2.resize(img, size, interpolation=interp)
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    return out, f


def match_image(query: np.ndarray, catalogue: np.ndarray, pairs: np.ndarray | None = None,
                region: np.ndarray | None = None, height: int = 300, max_lines: int = 60,
                gap: int = 16, query_box: tuple[int, int, int, int] | None = None
                ) -> np.ndarray:
    """The query (left) and a catalogue image (right) side by side, as a BGR uint8 array.

    Args:
        query: grayscale (or BGR) query image.
        catalogue: grayscale (or BGR) catalogue image.
        pairs: N x 4 float array of matched keypoints (qx, qy, cx, cy), in the pixel
            coordinates of ``query`` and ``catalogue``; up to ``max_lines`` are drawn.
        region: M x 2 polygon in ``catalogue`` pixel coordinates, outlined and shaded.
        height: height of each side in the drawing (wide images are narrower, see below).
        max_lines: most lines drawn (evenly sampled from pairs).
        gap: blank pixels between the two images.
        query_box: (x, y, width, height) of the part of ``query`` that matched (a picture
            inside a page), outlined.
    Returns:
        The drawing; each side is at most ``height`` high and ``2 * height`` wide.
    """
    if height < 16 or max_lines < 0 or gap < 0:
        raise ValueError("height must be at least 16; max_lines and gap not negative")
    left, fq = _fit(query, height, 2 * height)
    right, fc = _fit(catalogue, height, 2 * height)
    ch = max(left.shape[0], right.shape[0])
    cw = left.shape[1] + gap + right.shape[1]
    canvas = np.full((ch, cw, 3), BACKGROUND, np.uint8)
    ly = (ch - left.shape[0]) // 2
    rx, ry = left.shape[1] + gap, (ch - right.shape[0]) // 2
    canvas[ly:ly + left.shape[0], :left.shape[1]] = left
    canvas[ry:ry + right.shape[0], rx:rx + right.shape[1]] = right

    if region is not None and len(region) >= 3:
        poly = np.asarray(region, np.float64) * fc + (rx, ry)
        poly = np.round(poly).astype(np.int32).reshape(-1, 1, 2)
        shade = canvas.copy()
        cv2.fillPoly(shade, [poly], REGION_BGR, lineType=cv2.LINE_AA)
        region_mask = np.zeros(canvas.shape[:2], np.uint8)
        region_mask[ry:ry + right.shape[0], rx:rx + right.shape[1]] = 1
        blend = cv2.addWeighted(canvas, 0.88, shade, 0.12, 0)
        canvas[region_mask == 1] = blend[region_mask == 1]
        cv2.polylines(canvas, [poly], True, REGION_BGR, 2, lineType=cv2.LINE_AA)

    if query_box is not None:
        x, y, w, h = (v * fq for v in query_box)
        cv2.rectangle(canvas, (round(x), round(y + ly)), (round(x + w), round(y + h + ly)),
                      REGION_BGR, 2, lineType=cv2.LINE_AA)

    if pairs is not None and len(pairs) and max_lines:
        pts = np.asarray(pairs, np.float64).reshape(-1, 4)
        if len(pts) > max_lines:
            pts = pts[np.linspace(0, len(pts) - 1, max_lines).round().astype(int)]
        for i, (qx, qy, cx, cy) in enumerate(pts):
            colour = _PALETTE[i % len(_PALETTE)]
            a = (round(qx * fq), round(qy * fq + ly))
            b = (round(cx * fc + rx), round(cy * fc + ry))
            cv2.line(canvas, a, b, colour, 1, lineType=cv2.LINE_AA)
            cv2.circle(canvas, a, 3, colour, 1, lineType=cv2.LINE_AA)
            cv2.circle(canvas, b, 3, colour, 1, lineType=cv2.LINE_AA)
    return canvas


def preview_rgb(data: bytes | None) -> np.ndarray | None:
    """A stored colour preview (JPEG bytes) as RGB, or None (no preview, or unreadable)."""
    if data is None:
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of a grayscale or BGR uint8 array."""
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("image could not be encoded as PNG")
    return buf.tobytes()
