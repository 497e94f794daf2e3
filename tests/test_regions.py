"""Content boxes: a picture pasted into a page or framed by a border is boxed tightly;
an ordinary photo yields no box (and so costs no extra searches)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import CATALOGUE_PHOTOS, box_iou, jpeg, photo, to_rgb, web_page

from echoimage.config import Settings
from echoimage.features.decode import decode_image
from echoimage.features.regions import collage_cells, content_boxes

#: the query cascade's number of content boxes
MAX_BOXES = Settings().max_boxes


def decoded(arr: np.ndarray, quality: int = 85) -> tuple[np.ndarray, float]:
    """The grayscale a query sees (JPEG round trip, query working size) and its scale
    (decoded pixels per input pixel)."""
    img = decode_image(jpeg(arr, quality), 64_000_000, 1024)
    return img.gray, img.gray.shape[1] / arr.shape[1]


def scaled(box: tuple[int, int, int, int], f: float) -> tuple[int, int, int, int]:
    return tuple(round(v * f) for v in box)  # type: ignore[return-value]


@pytest.mark.parametrize("name", CATALOGUE_PHOTOS)
def test_plain_photos_have_no_box(name: str) -> None:
    assert content_boxes(decoded(photo(name), 90)[0], MAX_BOXES) == []


@pytest.mark.parametrize("pale_top", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", CATALOGUE_PHOTOS)
def test_picture_in_a_page_is_boxed_tightly(name: str, seed: int, pale_top: float) -> None:
    """Text runs into the picture's sides, a caption sits right under it and (pale_top)
    its top rows are a flat band nearly the page's colour: the box is still the picture."""
    page, box = web_page(photo(name), seed, pale_top=pale_top)
    gray, f = decoded(page)
    boxes = content_boxes(gray, MAX_BOXES)
    assert max((box_iou(b, scaled(box, f)) for b in boxes), default=0) >= 0.95, boxes


@pytest.mark.parametrize("name", ["astronaut", "coffee", "moon", "hubble_deep_field"])
def test_picture_on_a_solid_border(name: str) -> None:
    arr = to_rgb(photo(name))
    h, w = arr.shape[:2]
    py, px = h // 5, w // 5
    framed = cv2.copyMakeBorder(arr, py, py, px, px, cv2.BORDER_CONSTANT, value=(200, 30, 60))
    gray, f = decoded(framed)
    boxes = content_boxes(gray, MAX_BOXES)
    assert boxes and box_iou(boxes[0], scaled((px, py, w, h), f)) >= 0.97, boxes


def test_two_pictures_in_a_page_get_a_box_each() -> None:
    a, b = to_rgb(photo("coffee")), to_rgb(photo("chelsea"))
    page = np.full((520, 900, 3), 245, np.uint8)
    page[40:440, 30:430] = cv2.resize(a, (400, 400))[:400, :400]
    page[100:400, 470:870] = cv2.resize(b, (400, 300))
    gray, f = decoded(page)
    boxes = content_boxes(gray, MAX_BOXES)
    for want in ((30, 40, 400, 400), (470, 100, 400, 300)):
        assert max(box_iou(x, scaled(want, f)) for x in boxes) >= 0.95, boxes


def test_a_page_of_text_and_buttons_has_no_box() -> None:
    page, _ = web_page(np.full((200, 200, 3), 245, np.uint8), 4)  # the "photo" is blank
    assert content_boxes(decoded(page)[0], MAX_BOXES) == []


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError):
        content_boxes(np.zeros((10, 10, 3), np.uint8), MAX_BOXES)
    with pytest.raises(ValueError):
        content_boxes(np.zeros((10, 10), np.uint8), MAX_BOXES, min_area=0.5, max_area=0.4)


def _grid(tiles: list[np.ndarray], n: int, cell: tuple[int, int], gutter: int
          ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """An n×n collage of the tiles (resized to cell = (w, h)) with gutters of that width."""
    cw, ch = cell
    canvas = np.full((n * ch + (n + 1) * gutter, n * cw + (n + 1) * gutter, 3), 250, np.uint8)
    boxes = []
    for k, tile in enumerate(tiles[: n * n]):
        r, c = divmod(k, n)
        x, y = gutter + c * (cw + gutter), gutter + r * (ch + gutter)
        canvas[y:y + ch, x:x + cw] = cv2.resize(to_rgb(tile), cell,
                                                interpolation=cv2.INTER_AREA)
        boxes.append((x, y, cw, ch))
    return canvas, boxes


@pytest.mark.parametrize("gutter", [0, 4])
@pytest.mark.parametrize("n", [2, 3])
def test_collage_is_split_into_its_cells(n: int, gutter: int) -> None:
    tiles = [photo(name) for name in CATALOGUE_PHOTOS]
    canvas, boxes = _grid(tiles, n, (280, 190), gutter)
    gray, f = decoded(canvas)
    cells = collage_cells(gray)
    assert len(cells) == n * n, cells
    for box in boxes:
        assert max(box_iou(c, scaled(box, f)) for c in cells) >= 0.95, (box, cells)


def test_side_by_side_pictures_are_two_cells() -> None:
    left = cv2.resize(to_rgb(photo("astronaut")), (300, 300))
    right = cv2.resize(to_rgb(photo("coffee")), (300, 300))
    cells = collage_cells(decoded(np.hstack([left, right]))[0])
    assert len(cells) == 2
    assert box_iou(cells[0], (0, 0, 300, 300)) >= 0.95
    assert box_iou(cells[1], (300, 0, 300, 300)) >= 0.95


@pytest.mark.parametrize("name", CATALOGUE_PHOTOS)
def test_plain_photos_are_no_collage(name: str) -> None:
    assert collage_cells(decoded(photo(name), 90)[0]) == []
