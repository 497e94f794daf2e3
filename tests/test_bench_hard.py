"""The hard suite's edits (deterministic, with the geometry they claim) and a small run."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data

from echoimage_bench import hard, hard_runner
from echoimage_bench.hard import HARD_EDITS, make_hard_query
from echoimage_bench.transforms import transform_rng


def _bgr(rgb: np.ndarray, w: int = 160, h: int = 120) -> np.ndarray:
    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[..., ::-1])


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    d = skimage.data
    return [_bgr(a) for a in (d.chelsea(), d.astronaut(), d.coffee(), d.rocket(),
                              d.immunohistochemistry(), d.hubble_deep_field()[:400, :600],
                              d.retina(), d.colorwheel()[..., :3], d.cat())]


@pytest.mark.parametrize("name", sorted(HARD_EDITS))
def test_edit_is_pure_and_deterministic_per_seed(name, photos):
    img, pool = photos[0], photos[1:]
    before = img.copy()
    e = HARD_EDITS[name]
    a = e.fn(img, transform_rng(0, 4, name), pool[:e.partners])
    b = e.fn(img, transform_rng(0, 4, name), pool[:e.partners])
    assert np.array_equal(img, before), "an edit must not modify its input"
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, b)
    assert make_hard_query(img, e, transform_rng(0, 4, name), pool) == \
        make_hard_query(img, e, transform_rng(0, 4, name), pool)


@pytest.mark.parametrize("name", ["compound_meme", "compound_sticker", "crop25",
                                  "rotate15_30", "perspective", "stickers", "hue",
                                  "vignette", "collage2x2"])
def test_random_edits_depend_on_the_seed(name, photos):
    e = HARD_EDITS[name]
    outs = {e.fn(photos[0], transform_rng(0, p, name), photos[1:1 + e.partners]).tobytes()
            for p in range(5)}
    assert len(outs) > 1


def test_quarter_crop_has_a_quarter_of_the_area_and_is_a_part_of_the_photo(photos):
    img = photos[0]
    out = hard.h_crop25(img, np.random.default_rng(1))
    assert out.shape[0] * out.shape[1] == img.shape[0] * img.shape[1] // 4
    found = cv2.matchTemplate(img, out, cv2.TM_SQDIFF)
    assert found.min() == 0


@pytest.mark.parametrize("n", [2, 3])
def test_collage_holds_the_photo_in_one_cell_and_the_partners_elsewhere(n, photos):
    img, others = photos[0], photos[1:n * n]
    canvas, (x, y, w, h) = hard.collage(img, others, n, 100, np.random.default_rng(5))
    cell = canvas[y:y + h, x:x + w]
    assert (w, h) == (100, 75)
    assert np.abs(cell.astype(int) - hard.resize_to(img, w, h).astype(int)).max() == 0
    # every other cell holds one of the partners, each once
    gut = max(2, 100 // 60)
    assert canvas.shape[:2] == (n * h + (n + 1) * gut, n * w + (n + 1) * gut)
    seen = []
    for k in range(n * n):
        r, c = divmod(k, n)
        cx, cy = gut + c * (w + gut), gut + r * (h + gut)
        if (cx, cy) == (x, y):
            continue
        tile = canvas[cy:cy + h, cx:cx + w]
        seen.append(next(i for i, o in enumerate(others)
                         if np.array_equal(tile, hard.resize_to(o, w, h))))
    assert sorted(seen) == list(range(n * n - 1))
    with pytest.raises(ValueError):
        hard.collage(img, others[:-1], n, 100, np.random.default_rng(5))


def test_rotation_keeps_the_whole_photo_on_a_larger_canvas(photos):
    img = photos[0]
    h, w = img.shape[:2]
    for seed in range(4):
        out = hard.h_rotate(img, np.random.default_rng(seed))
        assert out.shape[0] > h and out.shape[1] > w
        # the corners are one flat colour (the fill)
        assert np.array_equal(out[0, 0], out[-1, -1])
    turned = hard.rotate_filled(img, 20.0, (0, 0, 0))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    assert turned.shape[:2] == (round(w * s + h * c), round(w * c + h * s))


def test_tiny_copy_filters_and_noise(photos):
    img = photos[1]
    rng = np.random.default_rng(0)
    assert max(hard.h_tiny64(img, rng).shape[:2]) == 64
    assert np.array_equal(hard.hue_shift(img, 0), hard.hue_shift(img, 360))
    assert not np.array_equal(hard.hue_shift(img, 120), img)
    s = hard.sepia(img).astype(int)
    assert (s[..., 2] >= s[..., 0]).mean() > 0.99  # red at least blue: a warm tone
    v = hard.vignette(img, 0.8)
    assert v[0, 0].sum() < img[0, 0].sum() * 0.5 + 1 and np.array_equal(
        v[img.shape[0] // 2, img.shape[1] // 2], img[img.shape[0] // 2, img.shape[1] // 2])
    noisy = hard.h_noise(img, rng)
    assert 15 < np.abs(noisy.astype(int) - img.astype(int)).mean() < 40


def test_make_hard_query_needs_enough_partners(photos):
    with pytest.raises(ValueError, match="partner"):
        make_hard_query(photos[0], HARD_EDITS["collage3x3"], np.random.default_rng(0),
                        photos[1:4])


def test_run_hard_end_to_end(tmp_path):
    d = skimage.data
    rgb = {"astronaut": d.astronaut(), "chelsea": d.chelsea(), "coffee": d.coffee(),
           "rocket": d.rocket(), "ihc": d.immunohistochemistry(),
           "hubble": d.hubble_deep_field()[:400, :600],
           "retina": cv2.resize(d.retina(), (480, 480), interpolation=cv2.INTER_AREA),
           "coins": np.stack([d.coins()] * 3, -1), "camera": np.stack([d.camera()] * 3, -1),
           "brick": np.stack([d.brick()] * 3, -1), "grass": np.stack([d.grass()] * 3, -1),
           "page": np.stack([d.page()] * 3, -1)}
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, a in rgb.items():
        cv2.imwrite(str(photos / f"{name}.jpg"), np.ascontiguousarray(a[..., ::-1]))
    out = tmp_path / "out"
    edits = ["compound_meme", "collage2x2", "crop25", "hue"]
    result = hard_runner.run_hard(photos, out, limit=3, negatives_fraction=0.34,
                                  edits=edits, progress=False, command=["test"])
    assert json.loads((out / "bench-hard.json").read_text()) == result
    assert result["dataset"]["catalogue"] == 8 and result["dataset"]["held_out"] == 4
    assert result["dataset"]["query_photos"] == 3
    assert set(result["edits"]) == set(edits)
    for r in [*result["edits"].values(), *result["summary"].values()]:
        assert {"n", "recall_at_1", "recall_at_5", "detected", "misses", "negatives",
                "false_match_rate", "negative_max_score", "query_ms"} <= set(r)
        assert set(r["misses"]) == set(hard_runner.MISS_KINDS)
        assert r["query_ms"]["p50"] > 0
    for name in edits:
        r = result["edits"][name]
        assert r["n"] == 3 and r["negatives"] == 4
        # every query is a hit or a miss of exactly one kind
        assert round(r["detected"] * 3) + sum(r["misses"].values()) == 3
    assert result["edits"]["hue"]["recall_at_1"] == 1.0
    assert result["summary"]["compound"]["n"] == 3
    assert result["summary"]["all"]["n"] == 12
    assert all(m["miss"] in hard_runner.MISS_KINDS for m in result["missed"])
    # no copy verdict without proof; a miss never re-ranked says why
    assert result["summary"]["all"]["copies_without_proof"] == 0
    for m in result["missed"]:
        if m["miss"] == "never_reranked":
            assert {"hash_distance", "hash_rank", "votes_whole",
                    "votes_whole_mirrored"} <= set(m["diagnosis"])
    md = (out / "bench-hard.md").read_text()
    assert md == hard_runner.render_hard_markdown(result)
    assert "| hue | 3 | 1.000 |" in md and "**compound**" in md
    # an existing store (a padded one, say) is queried as it is, not rebuilt
    again = hard_runner.run_hard(photos, tmp_path / "again", limit=3, negatives_fraction=0.34,
                                 edits=["hue"], data_dir=out / "data", progress=False)
    assert again["build"]["seconds"] is None and again["build"]["indexed"] == 8
    assert again["entries"] == 8 and not (tmp_path / "again" / "data").exists()
    assert again["edits"]["hue"] == {**result["edits"]["hue"],
                                     "query_ms": again["edits"]["hue"]["query_ms"],
                                     "negative_query_ms_p50":
                                         again["edits"]["hue"]["negative_query_ms_p50"]}
    with pytest.raises(ValueError, match="unknown"):
        hard_runner.run_hard(photos, out, edits=["nope"], progress=False)
