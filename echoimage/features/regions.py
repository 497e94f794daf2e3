"""Content boxes: where a picture sits inside a larger query (a screenshot of a page, a
border, a caption or banner around it). Each box is searched as a query of its own.

Candidate areas come from three maps of a reduced copy of the query: dense texture (a
photo among text, buttons and cards, whose strokes and outlines are thin), areas off the
page's flat colour (dark or smooth pictures, which have little texture), and gradient
separated by flat margins (a picture on a border). Each area is trimmed of the rows and
columns it only touches (text running into a photo), then fitted to the pixels: a pasted
picture is a rectangle whose sides are straight steps in brightness, so every side moves to
the strongest step near it; a side with no step grows along its neighbours' edges (a sky as
pale as the page hides the top of a photo from the maps, not from its left and right
edges) or, when it is the only one, moves in to a step (a caption right under the photo).
A candidate is kept only when at least three sides are edges. Textured areas inside an
ordinary photo rarely have two, so a plain photo costs no extra searches.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height in the input's pixels

#: brightness step (of 255) that counts as an edge between neighbouring pixels
STEP = 10
#: fraction of a side's pixels that must step for the side to count as an edge
SIDE_MIN = 0.6
#: sides that must be edges for a candidate to become a box
SIDES_NEEDED = 3


def _iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def _reduced(gray: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """gray shrunk (INTER_AREA) to at most side pixels each way, and the factor used."""
    h, w = gray.shape
    f = min(1.0, side / max(h, w))
    if f >= 1:
        return gray, 1.0
    return cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))),
                      interpolation=cv2.INTER_AREA), f


def _share(line: np.ndarray) -> float:
    """The share of a boolean line that is set, a Python float (NaN when empty, as its
    mean): counted, not averaged in floating point (the same value, ~2x faster)."""
    return int(np.count_nonzero(line)) / line.size if line.size else float("nan")


def _shares(mask: np.ndarray, axis: int) -> np.ndarray:
    """mask.mean(axis) of a 2-D boolean mask, its set cells counted in integers and divided
    once: the same float64 values (a sum of ones is exact), in well under half the time."""
    n = mask.shape[axis]
    if n == 0:
        return mask.mean(axis=axis)  # NaNs, as before
    return mask.sum(axis=axis, dtype=np.int32) / n


class _Steps:
    """Which neighbouring pixels of an image differ by more than STEP."""

    def __init__(self, gray: np.ndarray) -> None:
        g = gray.astype(np.int16)
        self.h, self.w = g.shape
        self.rows = np.abs(np.diff(g, axis=0)) > STEP  # rows[y]: between y and y+1
        self.cols = np.abs(np.diff(g, axis=1)) > STEP  # cols[:, x]: between x and x+1

    def hline(self, y: int, x0: int, x1: int) -> float:
        """Fraction of x0..x1 with a step between rows y-1 and y (0 on the image edge)."""
        if not 0 < y < self.h or x1 <= x0:
            return 0.0
        return _share(self.rows[y - 1, x0:x1])

    def vline(self, x: int, y0: int, y1: int) -> float:
        """Fraction of y0..y1 with a step between columns x-1 and x (0 on the image edge)."""
        if not 0 < x < self.w or y1 <= y0:
            return 0.0
        return _share(self.cols[y0:y1, x - 1])

    def profiles(self, x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Edge strength of every horizontal line y across x0..x1 (index y, 0..h) and of
        every vertical line x across y0..y1 (index x, 0..w); 0 on the image's edges."""
        rowp = np.zeros(self.h + 1)
        rowp[1:self.h] = _shares(self.rows[:, x0:x1], 1)
        colp = np.zeros(self.w + 1)
        colp[1:self.w] = _shares(self.cols[y0:y1], 0)
        return rowp, colp

    def near_profiles(self, x0: int, y0: int, x1: int, y1: int, pad: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """profiles(), measured only within pad of the box's sides (0 elsewhere): all
        that snapping the sides reads, at a fraction of the cost."""
        rowp = np.zeros(self.h + 1)
        for y in (y0, y1):
            lo, hi = max(y - pad, 1), min(y + pad, self.h - 1)
            if hi >= lo:
                rowp[lo:hi + 1] = _shares(self.rows[lo - 1:hi, x0:x1], 1)
        colp = np.zeros(self.w + 1)
        for x in (x0, x1):
            lo, hi = max(x - pad, 1), min(x + pad, self.w - 1)
            if hi >= lo:
                colp[lo:hi + 1] = _shares(self.cols[y0:y1, lo - 1:hi], 0)
        return rowp, colp

    def vsteps(self, x: int) -> np.ndarray:
        """Per row: a step between columns x-1 and x, give or take a pixel in x."""
        lo, hi = max(0, x - 2), min(self.w - 1, x + 1)
        if hi <= lo:
            return np.zeros(self.h, bool)
        return self.cols[:, lo:hi].any(axis=1)

    def hsteps(self, y: int) -> np.ndarray:
        """Per column: a step between rows y-1 and y, give or take a pixel in y."""
        lo, hi = max(0, y - 2), min(self.h - 1, y + 1)
        if hi <= lo:
            return np.zeros(self.w, bool)
        return self.rows[lo:hi].any(axis=0)


def _sides(st: _Steps, x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """Edge strength of the top, bottom, left and right sides of a box."""
    return [st.hline(y0, x0, x1), st.hline(y1, x0, x1),
            st.vline(x0, y0, y1), st.vline(x1, y0, y1)]


def _snap(prof: np.ndarray, pos: int, lo: int, hi: int) -> int:
    """The position in lo..hi (clamped to prof) with the largest profile value, nearest
    pos on ties."""
    lo, hi = max(lo, 1), min(hi, len(prof) - 1)
    if hi < lo:
        return pos
    seg = prof[lo:hi + 1]
    best = np.flatnonzero(seg == seg.max()) + lo
    return int(best[np.argmin(np.abs(best - pos))])


def _snap_sides(st: _Steps, x0: int, y0: int, x1: int, y1: int, pad: int
                ) -> tuple[int, int, int, int]:
    """Every side of a box moved to the strongest straight step within pad of it."""
    rowp, colp = st.near_profiles(x0, y0, x1, y1, pad)
    y0, y1 = _snap(rowp, y0, y0 - pad, y0 + pad), _snap(rowp, y1, y1 - pad, y1 + pad)
    x0, x1 = _snap(colp, x0, x0 - pad, x0 + pad), _snap(colp, x1, x1 - pad, x1 + pad)
    return x0, y0, x1, y1


def _grow(present: np.ndarray, strength: np.ndarray, limit: int, guides: int) -> int:
    """How far a weak side can move outward (present and strength are indexed by the
    distance moved, from 1): along the run of its neighbours' edges (gaps of one allowed),
    to the farthest position in that run that is itself an edge; with both neighbours as
    guides, to the run's end if none is (a sky as pale as the page has no top edge)."""
    run = 0
    for i, ok in enumerate(present[:limit], 1):
        if ok:
            run = i
        elif i - run > 1:
            break
    strong = np.flatnonzero(strength[:run] >= SIDE_MIN)
    if strong.size:
        return int(strong[-1]) + 1
    return run if guides == 2 else 0


def _fit(st: _Steps, box: tuple[float, float, float, float], pad: int
         ) -> tuple[Box, int] | None:
    """Fit a rough box to the straight steps around it: the box and how many of its sides
    are edges, or None when fewer than SIDES_NEEDED are."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(st.w, x1), min(st.h, y1)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    x0, y0, x1, y1 = _snap_sides(st, x0, y0, x1, y1, pad)  # 1. to the steps near
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    # 2. a side without a step grows along its neighbours' edges
    for _ in range(2):
        top, bottom, left, right = (v >= SIDE_MIN for v in _sides(st, x0, y0, x1, y1))
        reach = 3 * max(x1 - x0, y1 - y0)
        if (left or right) and not (top and bottom):
            guides = [x for x, ok in ((x0, left), (x1, right)) if ok]
            on = np.logical_and.reduce([st.vsteps(x) for x in guides])
            rows = st.profiles(x0, y0, x1, y1)[0]
            if not top:
                y0 -= _grow(on[y0 - 1::-1] if y0 else on[:0],
                            rows[y0 - 1::-1] if y0 else rows[:0], reach, len(guides))
            if not bottom:
                y1 += _grow(on[y1:], rows[y1 + 1:], reach, len(guides))
        if (top or bottom) and not (left and right):
            guides = [y for y, ok in ((y0, top), (y1, bottom)) if ok]
            on = np.logical_and.reduce([st.hsteps(y) for y in guides])
            cols = st.profiles(x0, y0, x1, y1)[1]
            if not left:
                x0 -= _grow(on[x0 - 1::-1] if x0 else on[:0],
                            cols[x0 - 1::-1] if x0 else cols[:0], reach, len(guides))
            if not right:
                x1 += _grow(on[x1:], cols[x1 + 1:], reach, len(guides))
    # 3. when only one side is still without a step, it moves in to the strongest one
    # within a quarter of the box (a caption or a line of text right under a photo)
    top, bottom, left, right = (v >= SIDE_MIN for v in _sides(st, x0, y0, x1, y1))
    if top + bottom + left + right < 3:
        return None
    dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
    rows, cols = st.profiles(x0, y0, x1, y1)
    if not top and rows[y0:y0 + dy].max(initial=0) >= SIDE_MIN:
        y0 += int(np.argmax(rows[y0:y0 + dy]))
    if not bottom and rows[y1 - dy:y1 + 1].max(initial=0) >= SIDE_MIN:
        y1 = y1 - dy + int(np.argmax(rows[y1 - dy:y1 + 1]))
    if not left and cols[x0:x0 + dx].max(initial=0) >= SIDE_MIN:
        x0 += int(np.argmax(cols[x0:x0 + dx]))
    if not right and cols[x1 - dx:x1 + 1].max(initial=0) >= SIDE_MIN:
        x1 = x1 - dx + int(np.argmax(cols[x1 - dx:x1 + 1]))
    x0, y0, x1, y1 = _snap_sides(st, x0, y0, x1, y1, 2)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    edges = sum(s >= SIDE_MIN for s in _sides(st, x0, y0, x1, y1))
    if edges < SIDES_NEEDED:
        return None
    return (x0, y0, x1 - x0, y1 - y0), edges


def _margin_areas(small: np.ndarray) -> list[Box]:
    """Areas of gradient separated by flat margins, and their union (in small's pixels)."""
    sh, sw = small.shape
    grad = cv2.morphologyEx(small, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    mask = (grad > 10).astype(np.uint8)
    ks = max(3, round(min(sh, sw) * 0.03)) | 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((ks, ks), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found: list[Box] = []
    ys, xs = np.nonzero(mask)
    if len(xs):  # everything that is not margin
        found.append((int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1))
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1 if n > 1 else []:
        found.append(tuple(int(v) for v in stats[i, :4]))  # type: ignore[arg-type]
    return found


#: a box's least width, height and area (in a map's pixels), below which an area is no
#: candidate: (0, 0, 0) keeps every one
Least = tuple[float, float, float]


def _dense_areas(small: np.ndarray, least: Least = (0, 0, 0)) -> list[Box]:
    """Areas of dense texture (in small's pixels), those under `least` left out."""
    sh, sw = small.shape
    grad = cv2.morphologyEx(small, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    k = max(5, round(min(sh, sw) * 0.04)) | 1
    dense = (cv2.blur((grad > 8).astype(np.float32), (k, k)) > 0.55).astype(np.uint8)
    dense = cv2.morphologyEx(dense, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    return _components(dense, least)


def _components(mask: np.ndarray, least: Least = (0, 0, 0)) -> list[Box]:
    """Boxes of a mask's connected areas, largest first, each trimmed of the rows and
    columns it only touches (a line of text or an outline running into it). Areas whose
    box is under `least` before trimming are left out (trimming only shrinks a box)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found: list[Box] = []
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1 if n > 1 else []:
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        if _under(bw, bh, least):
            continue
        comp = labels[y:y + bh, x:x + bw] == i
        for _ in range(2):
            keep = np.flatnonzero((cc := _shares(comp, 0)) >= 0.5 * cc.max())
            comp, x = comp[:, keep[0]:keep[-1] + 1], x + int(keep[0])
            keep = np.flatnonzero((rr := _shares(comp, 1)) >= 0.5 * rr.max())
            comp, y = comp[keep[0]:keep[-1] + 1], y + int(keep[0])
        found.append((x, y, comp.shape[1], comp.shape[0]))
    return found


def _under(bw: int, bh: int, least: Least) -> bool:
    """Whether a bw x bh box is narrower, lower or smaller than `least` allows."""
    return bw < least[0] or bh < least[1] or bw * bh < least[2]


def _off_page_areas(small: np.ndarray, least: Least = (0, 0, 0)) -> list[Box]:
    """Solid areas that differ from a flat page colour (dark or flat pictures, whose
    texture map is empty), in small's pixels, those under `least` left out; none when
    no colour covers a fifth of the image."""
    hist = np.bincount(small.ravel(), minlength=256)
    page = int(np.argmax(hist))
    if hist[max(0, page - 2):page + 3].sum() < 0.2 * small.size:
        return []
    mask = (np.abs(small.astype(np.int16) - page) > 12).astype(np.uint8)
    return _components(cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)),
                       least)


def content_boxes(gray: np.ndarray, max_boxes: int, min_area: float = 0.02,
                  max_area: float = 0.85) -> list[Box]:
    """Up to max_boxes axis-aligned boxes of pictures pasted into the query: boxes with
    four straight edges first, then larger boxes first.

    Boxes cover between min_area and max_area of the image (the whole image is the query
    itself and is not repeated here) and have at least three straight edges.
    """
    if gray.ndim != 2:
        raise ValueError("content_boxes expects a 2-D grayscale array")
    if not 0 < min_area < max_area <= 1:
        raise ValueError("need 0 < min_area < max_area <= 1")
    h, w = gray.shape
    small, f = _reduced(gray, 256)
    sh, sw = small.shape
    st = _Steps(gray)
    pad = max(2, round(0.02 * max(sh, sw) / f))
    total = float(h * w)
    fitted: list[tuple[int, int, Box]] = []  # (edges, -area, box)
    least = (0.08 * sw, 0.08 * sh, 0.5 * min_area * sh * sw)
    for x, y, bw, bh in (_dense_areas(small, least) + _off_page_areas(small, least)
                         + _margin_areas(small)):
        if _under(bw, bh, least):
            continue
        fit = _fit(st, (x / f, y / f, (x + bw) / f, (y + bh) / f), pad)
        if fit is None:
            continue
        box, edges = fit
        if not min_area <= box[2] * box[3] / total <= max_area:
            continue
        if max(box[2] / box[3], box[3] / box[2]) > 4:
            continue
        if all(_iou(box, b) < 0.8 for _, _, b in fitted):
            fitted.append((edges, -box[2] * box[3], box))
        if len(fitted) >= 2 * max_boxes:
            break
    fitted.sort(key=lambda t: (-t[0], t[1]))
    return [b for _, _, b in fitted[:max_boxes]]


#: fraction of a line's pixels that must step for it to count as a seam between cells
SEAM_MIN = 0.6
#: ...and by this much more than the median of the lines within SEAM_WINDOW of it
SEAM_STANDOUT = 0.35
SEAM_WINDOW = 8
#: how far (of the side) a seam may sit from where an even grid puts it
SEAM_SLACK = 0.025
#: collages split into up to this many rows and columns
MAX_GRID = 4


def _seams(prof: np.ndarray, size: int) -> list[tuple[int, int]] | None:
    """The bands of seam lines of the largest even split (2..MAX_GRID parts) whose every
    inner boundary has a seam near it, as (first line, last line) per boundary with the
    image's own edges (and a frame around the grid) as the outer bands; None without one."""
    slack = max(2, round(SEAM_SLACK * size))
    frame_at = max(2, round(SEAM_SLACK * size))
    # a seam stands out from the lines around it (texture steps everywhere)
    seam = prof >= SEAM_MIN
    strong = np.flatnonzero(seam)
    if len(strong):
        padded = np.pad(prof, SEAM_WINDOW, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * SEAM_WINDOW + 1)
        seam[strong] = prof[strong] - np.median(windows[strong], axis=1) >= SEAM_STANDOUT

    def band(lo: int, hi: int) -> tuple[int, int] | None:
        hits = np.flatnonzero(seam[max(0, lo):min(size, hi) + 1]) + max(0, lo)
        return (int(hits[0]), int(hits[-1])) if len(hits) else None

    for n in range(MAX_GRID, 1, -1):
        inner = [band(round(k * size / n) - slack, round(k * size / n) + slack)
                 for k in range(1, n)]
        if all(b is not None for b in inner):
            top, bottom = band(1, frame_at), band(size - frame_at, size - 1)
            first = (0, top[1]) if top else (0, 0)
            last = (bottom[0], size) if bottom else (size, size)
            return [first, *inner, last]  # type: ignore[list-item]
    return None


def collage_cells(gray: np.ndarray, min_side: float = 0.15) -> list[Box]:
    """The cells of a collage: the query split along straight seams that cross it from
    side to side at the places an even grid of 2 to MAX_GRID rows or columns puts them
    (a gutter's two edges, or the step between two pictures). Each cell excludes the
    gutters and a frame around the grid. Empty when neither rows nor columns split (an
    ordinary photo), and cells under min_side of the query's side are left out."""
    if gray.ndim != 2:
        raise ValueError("collage_cells expects a 2-D grayscale array")
    h, w = gray.shape
    small, f = _reduced(gray, 512)
    sh, sw = small.shape
    if min(sh, sw) < 32:
        return []
    rowp, colp = _Steps(small).profiles(0, 0, sw, sh)
    rows = _seams(rowp, sh) or [(0, 0), (sh, sh)]
    cols = _seams(colp, sw) or [(0, 0), (sw, sw)]
    if len(rows) == 2 and len(cols) == 2:
        return []
    cells: list[Box] = []
    for (_, y0), (y1, _) in zip(rows, rows[1:], strict=False):
        for (_, x0), (x1, _) in zip(cols, cols[1:], strict=False):
            if y1 - y0 < min_side * sh or x1 - x0 < min_side * sw:
                continue
            bx, by = round(x0 / f), round(y0 / f)
            cells.append((bx, by, min(w, round(x1 / f)) - bx, min(h, round(y1 / f)) - by))
    return cells
