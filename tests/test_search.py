"""Finding parts of catalogue images: off-centre crops down to 16% of the area, and a photo
shown small inside a screenshot of a web page. The answer says where the match is: the
region in the catalogue image's original pixels, the part of the query that matched, and
the transform."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from helpers import box_iou, crop, jpeg, mirror, photo, search_engine, shrink, to_rgb, web_page

from echoimage.search.engine import QueryResult, SearchEngine, stop_hash_for
from echoimage_bench.hard import HARD_EDITS, collage, make_hard_query
from echoimage_bench.transforms import transform_rng

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]

#: photos with texture enough for a 40% crop anywhere in them (the clock's flat face,
#: for one, has too few keypoints in some corners)
TEXTURED = ("astronaut", "coffee", "brick", "coins", "moon", "grass")


@pytest.fixture(scope="module")
def engine(built) -> SearchEngine:
    return search_engine(built.settings)


def corners(x: int, y: int, w: int, h: int) -> np.ndarray:
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)


@pytest.mark.parametrize("frac,fx,fy", [(0.6, 0, 0), (0.6, 1, 1), (0.4, 0, 1), (0.4, 1, 0),
                                        (0.4, 0.5, 0.5)])
@pytest.mark.parametrize("name", TEXTURED)
def test_off_centre_crop_is_found_and_located(built, engine, name: str, frac: float,
                                              fx: float, fy: float) -> None:
    arr = photo(name)
    h, w = arr.shape[:2]
    cw, ch = round(w * frac), round(h * frac)
    x0, y0 = round((w - cw) * fx), round((h - ch) * fy)
    res = engine.query_bytes(jpeg(arr[y0:y0 + ch, x0:x0 + cw], 90), k=3)
    top = res.matches[0]
    assert top.url == built.catalogue.url(name)
    assert top.duplicate and top.orb_inliers >= 8
    # where: the crop's outline in the original's pixels, to 2% of its diagonal
    err = np.abs(np.array(top.region) - corners(x0, y0, cw, ch)).max()
    assert err <= 0.02 * np.hypot(w, h), top.region
    assert top.transform is not None and not top.transform["mirror"]
    assert top.transform["covered_fraction"] == pytest.approx(frac * frac, abs=0.02)
    assert top.transform["scale"] == pytest.approx(1.0, abs=0.1)
    assert top.query_box is None  # the whole query matched


def test_mirrored_crop_says_mirror(built, engine) -> None:
    arr = photo("coffee")
    h, w = arr.shape[:2]
    res = engine.query_bytes(jpeg(mirror(arr[: h // 2, w // 3:]), 90), k=3)
    top = res.matches[0]
    assert top.url == built.catalogue.url("coffee") and top.duplicate
    assert top.transform["mirror"] is True


@pytest.mark.parametrize("name", ["astronaut", "camera", "coffee", "chelsea", "rocket",
                                  "brick", "coins", "moon", "page", "clock", "grass",
                                  "hubble_deep_field"])
def test_photo_in_a_screenshot_is_found(built, engine, name: str) -> None:
    page, box = web_page(photo(name), 3)
    res = engine.query_bytes(jpeg(page, 85), k=3)
    top = res.matches[0]
    assert top.url == built.catalogue.url(name)
    assert top.duplicate
    # the part of the query that matched, in the query's own pixels
    assert top.query_box is not None
    got = tuple(round(v) for v in top.query_box)
    assert box_iou(got, box) >= 0.9, (got, box)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TEXTURED)
def test_screenshot_region_is_the_whole_catalogue_image(built, engine, name: str) -> None:
    page, _ = web_page(photo(name), 3)
    top = engine.query_bytes(jpeg(page, 85), k=1).matches[0]
    ph, pw = photo(name).shape[:2]
    err = np.abs(np.array(top.region) - corners(0, 0, pw, ph)).max()
    assert err <= 0.03 * np.hypot(pw, ph), top.region
    assert top.transform["covered_fraction"] >= 0.9
    assert top.transform["scale"] == pytest.approx(2.0, rel=0.1)  # shown at half size


def test_a_query_for_copies_only_scores_only_neighbours_nearer_than_chance(
        built, engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the hash round scores the whole query's k nearest hashes, to show k
    results. A query for its copies only is answered with them alone, and its hash round
    scores only the neighbours as near as chance ones come in a catalogue of this size (a
    copy among the farther ones agrees geometrically: the votes find it); a query whose
    keypoints say little (drowned in colour noise, or its grey levels crushed into a few)
    has them scored up to max_hash_distance. The copies are the same either way."""
    scored: list[tuple[str, int, int]] = []
    rerank = SearchEngine._rerank

    def spy(self, q, proposed, head) -> None:
        scored.extend((q.round, c.view, c.hash_distance)
                      for props in proposed.values() for c in props)
        rerank(self, q, proposed, head)

    def hash_round(data: bytes, copies_only: bool) -> tuple[list[int], QueryResult]:
        scored.clear()
        res = engine.query_bytes(data, k=5, copies_only=copies_only)
        return [d for r, v, d in scored if r == "hash" and v == 0], res

    monkeypatch.setattr(SearchEngine, "_rerank", spy)
    s = built.settings
    reach = stop_hash_for(s, engine.size)
    arr = skimage.data.retina()  # not in the catalogue: 1411x1411, detail everywhere
    whole, res = hash_round(jpeg(arr, 85), False)
    assert not res.found and len(res.matches) == 5 and len(whole) >= 5
    assert not res.copies_only
    assert any(d > reach for d in whole), whole  # the 5 nearest are farther than chance
    whole, res = hash_round(jpeg(arr, 85), True)
    assert not res.found and res.matches == [] and res.to_dict()["results"] == []
    assert res.copies_only and res.to_dict()["copies_only"] is True
    assert all(d <= reach for d in whole), whole
    h, w = arr.shape[:2]
    grain = np.random.default_rng(0).normal(0, 0.44 * 255, (h // 5, w // 5, 3))
    noisy = np.clip(arr + cv2.resize(grain.astype(np.float32), (w, h)), 0, 255)
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    dark = (255 * (gray / 255.0) ** 3).astype(np.uint8)  # a near-black gamma
    for data in (jpeg(noisy.astype(np.uint8), 90), jpeg(dark, 90)):
        whole, res = hash_round(data, True)
        assert not res.found and res.matches == []
        assert any(reach < d <= s.max_hash_distance for d in whole), whole
    farther = []  # copies whose original is farther in pHash than the reach
    for name in ("astronaut", "coffee"):
        for copy in (shrink(photo(name), 400), crop(photo(name), 0.6), mirror(photo(name))):
            data = jpeg(copy, 80)
            shown = engine.query_bytes(data, k=5)
            alone = engine.query_bytes(data, k=5, copies_only=True)
            assert len(shown.matches) == 5 and shown.copies
            assert [m.url for m in alone.matches] == [m.url for m in shown.copies]
            assert alone.matches[0].url == built.catalogue.url(name)
            assert all(m.verdict.is_copy for m in alone.matches)
            farther += [m for m in alone.matches if m.hash_distance > reach]
    assert farther and all(m.votes >= s.min_votes for m in farther)  # found by the votes


@pytest.mark.parametrize("other", ["immunohistochemistry", "gravel", "retina"])
def test_unrelated_photos_in_a_page_or_cropped_are_not_duplicates(engine, other: str) -> None:
    arr = getattr(skimage.data, other)()
    page, _ = web_page(arr, 1)
    crop = arr[: arr.shape[0] // 2, : arr.shape[1] // 2]
    for data in (jpeg(page, 85), jpeg(crop, 85)):
        res = engine.query_bytes(data, k=5)
        assert not any(m.duplicate for m in res.matches), [(Path(m.url).name, m.score)
                                                           for m in res.matches]


def test_votes_propose_what_the_hash_shortlist_misses(built) -> None:
    """With the hash shortlist cut to one far neighbour, the crop is found by votes."""
    settings = built.settings.model_copy(update={"rerank_n": 1, "max_hash_distance": 2})
    arr = photo("grass")
    h, w = arr.shape[:2]
    res = search_engine(settings, rebuild=False).query_bytes(jpeg(arr[h // 2:, w // 2:], 90),
                                                            k=1)
    top = res.matches[0]
    assert top.url == built.catalogue.url("grass")
    assert top.votes >= 3  # proposed by the local-feature index


@pytest.mark.parametrize("name", ["astronaut", "coffee", "brick"])
def test_mirrored_crop_is_proposed_by_the_mirrored_query(built, name: str) -> None:
    """A flipped 40% crop: neither its hash nor its keypoints resemble the original's
    unless the query is mirrored first; with the hash shortlist cut to one far neighbour,
    the mirrored query's votes find it."""
    settings = built.settings.model_copy(update={"rerank_n": 1, "max_hash_distance": 2})
    arr = photo(name)
    h, w = arr.shape[:2]
    x0, y0, cw, ch = w // 5, h // 2, round(0.4 * w), round(0.4 * h)
    data = jpeg(mirror(arr[y0:y0 + ch, x0:x0 + cw]), 90)
    top = search_engine(settings, rebuild=False).query_bytes(data, k=1).matches[0]
    assert top.url == built.catalogue.url(name) and top.duplicate
    assert top.orientation == "mirror" and top.transform["mirror"] is True
    assert top.votes >= 3
    err = np.abs(np.array(top.region) - corners(x0, y0, cw, ch)).max()
    assert err <= 0.02 * np.hypot(w, h), top.region


def test_a_later_proposal_never_lowers_an_image_score() -> None:
    """Scores from a second view or step are merged, not overwritten: each image keeps
    its better match."""
    from echoimage.search.engine import _keep_best
    from echoimage.types import Match

    def match(i: int, score: float, inliers: int) -> Match:
        return Match(id=i, url=f"u{i}", score=score, duplicate=False, exact=False, ssim=0.0,
                     orb_matches=inliers, orb_inliers=inliers, hash_distance=30,
                     orientation="identity", sha256="")

    best = {1: match(1, 0.4, 12), 2: match(2, 0.1, 3)}
    _keep_best(best, {1: match(1, 0.2, 9), 2: match(2, 0.3, 10), 3: match(3, 0.0, 1)})
    assert [(i, m.score) for i, m in sorted(best.items())] == [(1, 0.4), (2, 0.3), (3, 0.0)]


def _ratio_oracle(q: np.ndarray, c: np.ndarray, ratio: float) -> tuple[list[int], list[int]]:
    """The ratio test as OpenCV users write it: BFMatcher k=2 (ties: the lower index),
    then per catalogue row the nearest query row, in the order rows were first matched."""
    d = np.bitwise_count(q[:, None, :] ^ c[None, :, :]).sum(axis=2)
    best: dict[int, tuple[int, int]] = {}
    for i in range(len(q)):
        o = np.argsort(d[i], kind="stable")[:2]
        if d[i, o[0]] < ratio * d[i, o[1]]:
            t = int(o[0])
            if t not in best or d[i, o[0]] < best[t][1]:
                best[t] = (i, int(d[i, o[0]]))
    return [v[0] for v in best.values()], list(best)


def test_ratio_matches_equal_a_brute_force_oracle_and_opencv() -> None:
    import cv2

    from echoimage.search.rerank import ratio_matches

    rng = np.random.default_rng(1)
    for _ in range(60):
        c = rng.integers(0, 256, (int(rng.integers(2, 300)), 32), dtype=np.uint8)
        q = c[rng.integers(0, len(c), int(rng.integers(1, 200)))].copy()
        q ^= ((rng.random(q.shape) < 0.02) * rng.integers(1, 256, q.shape)).astype(np.uint8)
        q[::3] = rng.integers(0, 256, q[::3].shape)  # some with no near neighbour
        rows, train = ratio_matches(q, c, 0.8)
        assert (rows.tolist(), train.tolist()) == _ratio_oracle(q, c, 0.8)
        best: dict[int, cv2.DMatch] = {}
        for p in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(q, c, k=2):
            if len(p) == 2 and p[0].distance < 0.8 * p[1].distance:
                if p[0].trainIdx not in best or p[0].distance < best[p[0].trainIdx].distance:
                    best[p[0].trainIdx] = p[0]
        assert train.tolist() == list(best)
    empty = ratio_matches(q[:0], c, 0.8)
    assert len(empty[0]) == len(empty[1]) == 0
    assert len(ratio_matches(q, c[:1], 0.8)[0]) == 0


def _hue_turned(rgb: np.ndarray, degrees: int) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(int) + degrees * 256 // 360) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_colour_distance_and_the_colour_sensitive_verdict(built, engine, name: str) -> None:
    from echoimage.types import Verdict

    rgb = photo(name)
    same, recoloured = jpeg(rgb, 80), jpeg(_hue_turned(rgb, 120), 90)
    for data, sensitive, want in ((same, None, Verdict.DUPLICATE),
                                  (same, True, Verdict.DUPLICATE),
                                  (recoloured, None, Verdict.DUPLICATE),
                                  (recoloured, False, Verdict.DUPLICATE),
                                  (recoloured, True, Verdict.RECOLOURED)):
        top = engine.query_bytes(data, k=3, colour_sensitive=sensitive).matches[0]
        assert top.url == built.catalogue.url(name) and top.duplicate
        assert top.colour_distance is not None and top.verdict is want, (sensitive, top)
        far = top.colour_distance > built.settings.colour_threshold
        assert far is (data is recoloured)
    # a gray catalogue image against its gray copy: no colour either side, close
    top = engine.query_bytes(jpeg(photo("camera"), 80), k=1).matches[0]
    assert top.colour_distance is not None and top.colour_distance < 0.05


def test_a_recoloured_picture_in_a_page_is_judged_by_its_own_colours(built, engine) -> None:
    """The page around a picture does not count: the picture's colours do."""
    from echoimage.types import Verdict

    page, _ = web_page(photo("astronaut"), seed=3)
    top = engine.query_bytes(jpeg(page, 90), k=1, colour_sensitive=True).matches[0]
    assert top.url == built.catalogue.url("astronaut") and top.verdict is Verdict.DUPLICATE
    assert top.colour_distance is not None and top.colour_distance < 0.15


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(to_rgb(rgb)[..., ::-1])


def _strangers(n: int) -> list[np.ndarray]:
    """n BGR pictures that are not in the catalogue: parts of three scikit-image photos."""
    out = []
    for name in ("immunohistochemistry", "gravel", "retina"):
        arr = _bgr(getattr(skimage.data, name)())
        h, w = arr.shape[:2]
        out += [arr[: h // 2, : w // 2], arr[h // 2:, w // 2:], arr[h // 4: 3 * h // 4, :]]
    return out[:n]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "coins", "grass"])
def test_captioned_mirrored_turned_darkened_crop_is_found(built, engine, name: str) -> None:
    """A 70% crop, mirrored, turned, darkened, with large meme text top and bottom, saved
    at JPEG 40: the text takes the query's strongest keypoints, the wide round's reach
    the photo. (Photos with texture enough: a clock face or a star field under all that
    is still missed.)"""
    edit = HARD_EDITS["compound_meme"]
    for seed in range(2):
        data = make_hard_query(_bgr(photo(name)), edit, transform_rng(0, seed, edit.name), [])
        top = engine.query_bytes(data, k=3).matches[0]
        assert top.url == built.catalogue.url(name) and top.duplicate, (seed, top.score)
        assert top.transform is not None and top.transform["mirror"] is True
        assert top.query_box is None  # the whole query, not a part of it


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket", "clock"])
def test_photo_in_a_collage_is_found_in_its_cell(built, engine, name: str, n: int) -> None:
    arr = _bgr(photo(name))
    canvas, (x, y, w, h) = collage(arr, _strangers(n * n - 1), n, 300,
                                   np.random.default_rng(n))
    top = engine.query_bytes(jpeg(np.ascontiguousarray(canvas[..., ::-1]), 90), k=3).matches[0]
    assert top.url == built.catalogue.url(name) and top.duplicate
    # what matched is the photo's cell: the box of the view that found it, or (found from
    # the whole collage) the inlier keypoints, which lie in the cell
    if top.query_box is not None:
        got = tuple(round(v) for v in top.query_box)
        assert box_iou(got, (x, y, w, h)) >= 0.9, (got, (x, y, w, h))  # type: ignore[arg-type]
    assert top.pairs is not None and len(top.pairs) >= 8
    qx, qy = top.pairs[:, 0], top.pairs[:, 1]
    inside = (qx >= x - 2) & (qx <= x + w + 2) & (qy >= y - 2) & (qy <= y + h + 2)
    assert inside.mean() >= 0.9


def test_a_collage_of_unrelated_photos_is_no_duplicate(engine) -> None:
    parts = _strangers(9)
    canvas, _ = collage(parts[0], parts[1:], 3, 300, np.random.default_rng(0))
    res = engine.query_bytes(jpeg(np.ascontiguousarray(canvas[..., ::-1]), 90), k=5)
    assert not any(m.duplicate for m in res.matches), [(Path(m.url).name, m.score)
                                                       for m in res.matches]
