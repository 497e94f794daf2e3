"""The benchmark's pure helpers, and one tiny end-to-end run on generated photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import sqlalchemy
from helpers import bench_photo_folder, indexed_features

from echoimage_bench import (
    baselines,
    context,
    formatting,
    metrics,
    padding,
    report,
    runner,
    transforms,
)
from echoimage_bench.transforms import TRANSFORMS, transform_rng


def _photo(h: int = 90, w: int = 120) -> np.ndarray:
    """A small BGR test image with colour, edges and texture."""
    rgb = skimage.data.chelsea()
    return np.ascontiguousarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1])


# (height, width) of each transform's output for a 90x120 input
EXPECTED_SHAPES = {
    "identity": (90, 120), "jpeg30": (90, 120), "downscale50": (45, 60),
    "thumb128": (96, 128), "upscale2x": (180, 240), "blur2": (90, 120),
    "brighter": (90, 120), "darker": (90, 120), "grayscale": (90, 120), "mirror": (90, 120),
    "rot90": (120, 90), "rot5": (90, 120), "crop80": (72, 96), "border20": (126, 168),
    "banner15": (90, 120), "stretch1.35": (90, 162), "combo": (81, 108),
    "crop60_rand": (54, 72), "crop40_rand": (36, 48), "crop60_rot90": (72, 54),
    "crop60_mirror": (54, 72), "screenshot": (144, 192),
}


def test_every_transform_has_an_expected_shape():
    assert set(EXPECTED_SHAPES) == set(TRANSFORMS)
    extra = {n for n, t in TRANSFORMS.items() if t.extra}
    assert extra == {"crop60_rand", "crop40_rand", "crop60_rot90", "crop60_mirror",
                     "screenshot"}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_shape_dtype_and_purity(name):
    img = _photo()
    before = img.copy()
    out = TRANSFORMS[name].fn(img, transform_rng(0, 7, name))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == EXPECTED_SHAPES[name]
    assert np.array_equal(img, before), "a transform must not modify its input"
    assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_is_deterministic_given_the_rng(name):
    img = _photo()
    a = TRANSFORMS[name].fn(img, transform_rng(3, 1, name))
    b = TRANSFORMS[name].fn(img, transform_rng(3, 1, name))
    assert np.array_equal(a, b)


def test_random_transforms_depend_on_the_rng():
    img = _photo()
    for name in ("crop60_rand", "crop40_rand", "screenshot", "border20"):
        outs = {TRANSFORMS[name].fn(img, transform_rng(0, p, name)).tobytes() for p in range(6)}
        assert len(outs) > 1, name


def test_mirrored_crop_is_the_crop_mirrored():
    img = _photo()
    crop = TRANSFORMS["crop60_rand"].fn(img, transform_rng(0, 3, "x"))
    flipped = TRANSFORMS["crop60_mirror"].fn(img, transform_rng(0, 3, "x"))
    assert np.array_equal(flipped, crop[:, ::-1])


def test_transform_semantics():
    img = _photo()
    rng = np.random.default_rng(0)
    mirror = TRANSFORMS["mirror"].fn
    assert np.array_equal(mirror(mirror(img, rng), rng), img)
    rot = TRANSFORMS["rot90"].fn(img, rng)
    assert np.array_equal(np.rot90(rot, -1), img)
    gray = TRANSFORMS["grayscale"].fn(img, rng)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    brighter = TRANSFORMS["brighter"].fn(img, rng)
    assert brighter.mean() > img.mean() and brighter.max() == 255
    assert TRANSFORMS["darker"].fn(img, rng).mean() < img.mean() * 0.7
    crop = TRANSFORMS["crop80"].fn(img, rng)
    assert np.array_equal(crop, img[9:81, 12:108])
    border = TRANSFORMS["border20"].fn(img, np.random.default_rng(1))
    assert np.array_equal(border[18:108, 24:144], img)  # the photo is the middle
    assert len(np.unique(border[:18].reshape(-1, 3), axis=0)) == 1  # a solid border
    banner = TRANSFORMS["banner15"].fn(img, rng)
    assert np.array_equal(banner[:76], img[:76]) and not np.array_equal(banner[76:], img[76:])
    rot5 = TRANSFORMS["rot5"].fn(img, rng)
    assert (rot5[0, 0] == 0).all()  # black corners, not reflected


def test_transforms_reject_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        transforms.t_mirror(np.zeros((20, 20), np.uint8), rng)
    with pytest.raises(ValueError):
        transforms.t_mirror(np.zeros((20, 20, 3), np.float32), rng)
    with pytest.raises(TypeError):
        transforms.t_mirror([[0]], rng)  # type: ignore[arg-type]


def test_make_query_encodes_jpeg_at_the_transform_quality():
    img = _photo(180, 240)
    q90 = transforms.make_query(img, TRANSFORMS["identity"], transform_rng(0, 0, "identity"))
    q30 = transforms.make_query(img, TRANSFORMS["jpeg30"], transform_rng(0, 0, "jpeg30"))
    assert q90[:3] == b"\xff\xd8\xff" and q30[:3] == b"\xff\xd8\xff"
    assert len(q30) < len(q90)
    assert TRANSFORMS["jpeg30"].quality == 30 and TRANSFORMS["combo"].quality == 50
    decoded = cv2.imdecode(np.frombuffer(q90, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == img.shape


def test_transform_rng_is_keyed_by_seed_photo_and_transform():
    def draw(*key):
        return transform_rng(*key).integers(0, 1 << 30)

    assert draw(0, 1, "crop60_rand") == draw(0, 1, "crop60_rand")
    assert len({draw(0, 1, "crop60_rand"), draw(0, 2, "crop60_rand"),
                draw(1, 1, "crop60_rand"), draw(0, 1, "crop40_rand")}) == 4


def test_rank_recall_and_rate():
    assert metrics.rank_of("b", ["a", "b", "c"]) == 2
    assert metrics.rank_of("z", ["a"]) is None
    ranks = [1, 2, None, 5, 6]
    assert metrics.recall_at_k(ranks, 1) == 0.2
    assert metrics.recall_at_k(ranks, 5) == 0.6
    assert metrics.recall_at_k([], 1) is None
    with pytest.raises(ValueError):
        metrics.recall_at_k(ranks, 0)
    assert metrics.rate([True, False, True, True]) == 0.75
    assert metrics.rate([]) is None


def test_percentile_and_quantiles():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert metrics.percentile(values, 50) == 3.0
    assert metrics.percentile(values, 95) == pytest.approx(np.percentile(values, 95))
    assert metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        metrics.percentile(values, 101)
    q = metrics.quantiles(values)
    assert q == {"min": 1.0, "p5": 1.2, "p50": 3.0, "p95": 4.8, "max": 5.0}
    assert metrics.quantiles([]) is None


def test_threshold_at_fmr():
    neg = [0.0] * 97 + [0.3, 0.6, 0.9]
    t = metrics.threshold_at_fmr(neg, 0.01)  # one of 100 may pass
    assert t == pytest.approx(0.6001)
    assert sum(s >= t for s in neg) == 1
    t0 = metrics.threshold_at_fmr(neg, 0.0)
    assert t0 == pytest.approx(0.9001) and sum(s >= t0 for s in neg) == 0
    assert metrics.threshold_at_fmr([0.0] * 200, 0.01) == pytest.approx(0.0001)
    assert metrics.threshold_at_fmr([], 0.01) is None
    assert metrics.threshold_at_fmr([0.5], 0.5) == pytest.approx(0.5001)
    assert metrics.just_above(0.42485) == pytest.approx(0.4249)
    assert metrics.just_above(0.2) == pytest.approx(0.2001)
    with pytest.raises(ValueError):
        metrics.threshold_at_fmr(neg, 1.0)


def test_hamming_topk_matches_a_popcount_oracle():
    rng = np.random.RandomState(123)
    codes = rng.randint(0, 256, (200, 8)).astype(np.uint8)
    codes[17] = codes[3]  # a tie: the lower row comes first
    query = codes[3].tobytes()
    rows, dist = baselines.hamming_topk(query, codes, 5)
    oracle = [sum(bin(a ^ b).count("1") for a, b in zip(query, c, strict=True)) for c in codes]
    assert list(dist) == sorted(oracle)[:5]
    assert [int(r) for r in rows[:2]] == [3, 17] and dist[0] == 0
    assert all(oracle[r] == d for r, d in zip(rows, dist, strict=True))
    with pytest.raises(ValueError):
        baselines.hamming_topk(b"\x00" * 4, codes, 5)


def test_markdown_table():
    text = formatting.markdown_table(["name", "r@1"], [["a|b", "1.000"], ["c", "—"]])
    lines = text.splitlines()
    assert lines[0] == "| name | r@1 |"
    assert lines[1] == "|:---|---:|"
    assert lines[2] == "| a\\|b | 1.000 |"
    assert len(lines) == 4
    with pytest.raises(ValueError):
        formatting.markdown_table(["a", "b"], [["only one"]])
    assert formatting.fmt_rate(None) == "—" and formatting.fmt_rate(0.5) == "0.500"


def test_split_photos_is_seeded_and_disjoint():
    files = [Path(f"/p/{i:03d}.jpg") for i in range(50)]
    cat, neg = context.split_photos(files, 0, 0.2)
    assert len(neg) == 10 and len(cat) == 40
    assert not set(cat) & set(neg) and sorted(cat + neg) == files
    assert cat == sorted(cat) and neg == sorted(neg)
    assert context.split_photos(files, 0, 0.2) == (cat, neg)
    assert context.split_photos(files, 1, 0.2)[1] != neg


def test_synthetic_image_is_deterministic_and_textured():
    from echoimage.features.orb import orb_features

    a = padding.synthetic_image(5, seed=0)
    assert a.shape == (240, 320) and a.dtype == np.uint8
    assert np.array_equal(a, padding.synthetic_image(5, seed=0))
    assert not np.array_equal(a, padding.synthetic_image(6, seed=0))
    assert not np.array_equal(a, padding.synthetic_image(5, seed=1))
    assert len(orb_features(a, 500)) > 200


def test_seed_score_prefers_the_same_image():
    a = _photo(120, 160)
    other = np.ascontiguousarray(
        cv2.resize(skimage.data.coffee(), (160, 120))[..., ::-1])
    same = baselines.seed_score(a, transforms.jpeg_roundtrip(a, 60))
    diff = baselines.seed_score(a, other)
    assert 0.8 < same.score <= 1.0 and same.score > diff.score + 0.3
    assert same.ssim > diff.ssim and same.hist > diff.hist


def test_run_benchmark_end_to_end(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    bench_photo_folder(photos)
    result = runner.run_benchmark(photos, out, limit=6, scale=(), seed_subset=(3, 1),
                                 latency_queries=8, peers=False, progress=False,
                                 command=["test"])
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert {"version", "date", "command", "machine", "params", "dataset", "build",
            "transforms", "summary", "negatives", "calibration", "latency", "scale",
            "baselines", "peers", "memory", "phases", "notes"} <= set(result)
    assert result["peers"] == {"ran": False}  # (tests/test_bench_peers.py runs them)
    assert result["dataset"]["catalogue"] == 10 and result["dataset"]["negatives"] == 2
    assert result["dataset"]["indexed"] == 10 and result["dataset"]["query_photos"] == 6
    assert set(result["transforms"]) == set(TRANSFORMS)
    jpeg30 = result["transforms"]["jpeg30"]
    assert jpeg30["n"] == 6 and jpeg30["echoimage"]["recall_at_1"] == 1.0
    assert result["transforms"]["screenshot"]["extra"] is True
    assert {"recall_at_1", "recall_at_5"} <= set(jpeg30["phash"])
    assert jpeg30["seed"]["n"] == 1
    assert result["build"]["indexed"] == 10 and result["build"]["images_per_s"] > 0
    assert result["negatives"]["n"] == 2 * len(transforms.NEGATIVE_TRANSFORMS)
    assert "threshold" in result["calibration"]
    lat = result["latency"]["catalogue"]
    assert lat["queries"] == 8 and lat["query_image_ms"]["p50"] > 0
    assert lat["parts"]["queries"] == 4 and lat["parts"]["query_image_ms"]["p50"] > 0
    # held-out photos, timed as no-copy queries, with the rounds their cascade ran
    assert lat["no_copy"]["queries"] == 4 and lat["no_copy"]["query_image_ms"]["p50"] > 0
    assert lat["no_copy"]["false_match_rate"] == 0.0
    assert lat["no_copy"]["rounds_ran"]["hash"] == 1.0
    assert "votes" in lat["no_copy"]["rounds_ran"]
    # no copy verdict without proof, over every query of the run; false matches over every
    # suite's held-out queries (two held-out photos: too few for the hard edits)
    main_neg = 2 * len(transforms.NEGATIVE_TRANSFORMS)
    assert result["evidence"] == {
        "copies_without_proof": 0,
        "queries": 6 * len(TRANSFORMS) + 6 * len(transforms.RECOLOUR_TRANSFORMS) + main_neg,
        "negatives": {"main": {"n": main_neg, "false_matches": 0}},
        "all_negatives": {"n": main_neg, "false_matches": 0, "false_match_rate": 0.0}}
    assert result["hard"]["ran"] is False and "need at least" in result["hard"]["skipped"]
    assert result["scale"] == {}
    assert result["baselines"]["seed"]["extrapolated_s_per_query_at_1m"] > 0
    md = (out / "bench.md").read_text()
    assert md == report.render_markdown(result)
    assert "| jpeg30 | 6 | 1.000 |" in md and "screenshot (extra)" in md
    assert "parts of photos (extra transforms), 4 queries" in md
    assert "no copy (held-out photos, negative transforms), 4 queries" in md
    assert "Copy verdicts without proof" in md
    assert f"over every suite: **0 of {main_neg}** (0.00%; main 0 of {main_neg})" in md
    assert (out / "catalogue.txt").read_text().count("\n") == 10


def test_padding_key_tracks_what_the_rows_are_made_from():

    def feats(i: int):
        ok, buf = cv2.imencode(".bmp", padding.synthetic_image(i))
        return indexed_features(buf.tobytes())

    d01 = padding.features_digest([feats(0), feats(1)])
    assert d01 == padding.features_digest([feats(0), feats(1)])
    assert d01 != padding.features_digest([feats(1), feats(0)])
    key = padding.padding_key("cat", d01, (1, 2, 3, 4), 0)
    assert key == padding.padding_key("cat", d01, (1, 2, 3, 4), 0)
    assert len({key, padding.padding_key("cat2", d01, (1, 2, 3, 4), 0),
                padding.padding_key("cat", "x", (1, 2, 3, 4), 0),
                padding.padding_key("cat", d01, (1, 2, 3, 5), 0),
                padding.padding_key("cat", d01, (1, 2, 3, 4), 1)}) == 5


def test_scale_benchmark_end_to_end(tmp_path):
    """Photos among derived padding at two scales, each answered by a serving process."""
    from echoimage_bench.scale import render_scale_markdown, run_scale_benchmark

    photos, out = tmp_path / "photos", tmp_path / "out"
    bench_photo_folder(photos)
    result = run_scale_benchmark(photos, out, scales=(200, 400), photos=10,
                                 query_photos=2, negatives=2, progress=False)
    assert json.loads((out / "scale.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["scales"]) == {"10", "200", "400"}
    whole = [t for t in TRANSFORMS.values() if not t.extra]
    for scale, r in result["scales"].items():
        assert r["entries"] == int(scale)
        e = r["echoimage"]
        assert e["whole"]["queries"] == 2 * len(whole)
        assert e["parts"]["queries"] == 2 * (len(TRANSFORMS) - len(whole))
        assert set(e["whole"]["recall_at_1_by_transform"]) == {t.name for t in whole}
        assert e["whole"]["recall_at_1"] >= 0.9 and e["whole"]["ms_p50"] > 0
        assert e["whole"]["stage_ms_p50"]["rerank_ms"] > 0
        assert e["negatives"]["queries"] == 2 * len(transforms.NEGATIVE_TRANSFORMS)
        assert r["phash"]["whole"]["recall_at_1"] is not None
        assert r["serving"]["peak_rss_mb"] > 50 and r["index_rebuild_peak_rss_mb"] > 50
        assert r["store_bytes_per_image"] > r["feature_bytes_per_image"] > 1000
        lists = r["ivf_lists"]  # 10 photos' keypoints are a flat index, 200 entries' not
        if scale == "10":
            assert lists is None
        else:
            assert lists["lists"] >= 256 and lists["mean_list"] > 0
            assert lists["scanned_p50"] > 0 and lists["probed_x"] > 0
            assert lists["entry_x"] >= 1.0  # the mean list as an entry sees it, at least
    assert not (out / "scale-data").exists()
    md = render_scale_markdown(result)
    assert "| | 10 | 200 | 400 |" in md and "serving process" in md
    assert "largest recall@1 drop" in md
    assert "first votes: entries scanned" in md


def test_derived_rows_do_not_depend_on_the_worker_count(built, tmp_path):
    """Padding derived by a pool of processes is the same as padding derived in-process,
    and is indexed like any row (change numbers, features that decode)."""
    import shutil

    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory
    from echoimage.store.models import FeatureRow, ImageRow
    from echoimage_bench.derived import DERIVED_PREFIX, add_derived_rows

    rows = {}
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        shutil.copytree(built.settings.data_dir, d)
        s = built.settings.model_copy(update={"data_dir": d})
        engine = open_store(s)
        try:
            with session_factory(engine)() as session:
                before = repo.store_state(session)
            add_derived_rows(engine, 0, 25, seed=7, batch=10, workers=workers)
            with session_factory(engine)() as session:
                after = repo.store_state(session)
                got = session.execute(
                    sqlalchemy.select(ImageRow.url, ImageRow.width, FeatureRow.phash,
                                      FeatureRow.thumbnail, FeatureRow.descriptors)
                    .join(FeatureRow, FeatureRow.image_id == ImageRow.id)
                    .where(ImageRow.url.startswith(DERIVED_PREFIX))
                    .order_by(ImageRow.url)).all()
                cands = repo.candidates(session, [i for i in range(1, before.count + 26)])
        finally:
            engine.dispose()
        assert after.count == before.count + 25 and after.seq > before.seq
        assert len(got) == 25 and len(cands) == before.count + 25
        rows[workers] = [tuple(r) for r in got]
    assert rows[1] == rows[2]


def test_run_benchmark_pads_with_derived_rows(tmp_path):
    """The scale phase pads copies of the catalogue store with derived rows, caches them
    and times the same queries on each padded store."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    bench_photo_folder(photos)
    kw = dict(limit=3, scale=(60, 90), seed_subset=(2, 1), latency_queries=4,
              progress=False, command=["test"], workers=2, background_padding=False,
              peers=False)
    result = runner.run_benchmark(photos, out, **kw)
    for scale in (60, 90):
        r = result["scale"][str(scale)]
        assert r["entries"] == scale and r["queries"] == 4 and r["recall_at_1"] >= 0.75
        assert r["padding"]["padding_entries"] == scale - 10
        assert not r["padding"]["cached"]
    assert result["scale"]["90"]["padding"]["generated_this_build"] == 30  # from the 60
    again = runner.run_benchmark(photos, out, **kw)
    assert all(again["scale"][s]["padding"]["cached"] for s in ("60", "90"))
    assert "derived entries" in (out / "bench.md").read_text()


def test_evidence_summary_counts_every_suite():
    recs = [context.QueryRecord("jpeg30", i, 1, 0.99, True, 40.0, 1, 2, 2) for i in range(2)]
    neg = {"n": 10, "false_matches": 0, "copies_without_proof": 0}
    peers = {"methods": {"echoimage": {}}, "copies": 4, "negatives": 20,
             "echoimage_false_matches": [{"transform": "blur", "photo": "x.jpg",
                                          "score": 0.7}],
             "echoimage_copies_without_proof": 0}
    hard = {"ran": True, "false_matches": [],
            "summary": {"all": {"n": 6, "negatives": 30, "copies_without_proof": 0}}}
    ev = runner.evidence_summary(recs, neg, peers, hard)
    assert ev["queries"] == 2 + 10 + 24 + 36 and ev["copies_without_proof"] == 0
    assert ev["negatives"] == {"main": {"n": 10, "false_matches": 0},
                               "peers": {"n": 20, "false_matches": 1},
                               "hard": {"n": 30, "false_matches": 0}}
    assert ev["all_negatives"] == {"n": 60, "false_matches": 1, "false_match_rate": 1 / 60}
    # suites that did not run count nothing
    alone = runner.evidence_summary(recs, neg, {"ran": False}, {"ran": False})
    assert set(alone["negatives"]) == {"main"} and alone["queries"] == 12
    md = "\n".join(report._evidence_lines(ev))
    assert ("over every suite: **1 of 60** (1.67%; main 0 of 10, peers 1 of 20, hard 0 of "
            "30)") in md
