"""The peer suite: perception's benchmark transforms (seeded, sized and placed as its
albumentations calls are), the PDQ and perception PHash adapters, and the benchmark with
and without the peers' packages."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import skimage.data
from helpers import bench_photo_folder

from echoimage_bench import peer_suite, peers, runner
from echoimage_bench import peer_transforms as pt
from echoimage_bench.peer_transforms import PEER_TRANSFORMS
from echoimage_bench.transforms import jpeg_roundtrip, make_query, transform_rng

H, W = 90, 120


def _photo(h: int = H, w: int = W) -> np.ndarray:
    rgb = skimage.data.astronaut()
    return np.ascontiguousarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1])


def _centroid(img: np.ndarray) -> tuple[float, float]:
    """(x, y) of the bright pixels' centre of mass."""
    ys, xs = np.nonzero(img.max(axis=2) > 127)
    return float(xs.mean()), float(ys.mean())


def test_the_suite_has_perceptions_kinds():
    assert set(pt.PERCEPTION_NAMES) == set(PEER_TRANSFORMS)
    named = {v for v in pt.PERCEPTION_NAMES.values() if v}
    assert named == {"watermark", "blur2", "vignette", "gamma2", "jpeg95", "pad0.2",
                     "crop0.05", "noise0.2", "rotate4", "noop"}
    assert all(t.quality == 95 and not t.extra for t in PEER_TRANSFORMS.values())


@pytest.mark.parametrize("name", sorted(PEER_TRANSFORMS))
def test_peer_transform_size_purity_and_seed(name):
    img = _photo()
    before = img.copy()
    fn = PEER_TRANSFORMS[name].fn
    out = fn(img, transform_rng(0, 7, name))
    assert out.dtype == np.uint8 and out.shape == img.shape  # every kind keeps the size
    assert out.flags["C_CONTIGUOUS"]
    assert np.array_equal(img, before), "a transform must not modify its input"
    assert np.array_equal(out, fn(img, transform_rng(0, 7, name)))


@pytest.mark.parametrize("name", ["blur_0_2", "gamma_white", "gamma_black", "pad20_200",
                                  "noise_heavy"])
def test_random_kinds_depend_on_the_rng(name):
    img = _photo()
    outs = {PEER_TRANSFORMS[name].fn(img, transform_rng(0, p, name)).tobytes()
            for p in range(6)}
    assert len(outs) > 1


def test_noop_and_jpeg():
    img = _photo()
    rng = np.random.default_rng(0)
    assert np.array_equal(pt.p_noop(img, rng), img)
    jpeg = pt.p_jpeg95(img, rng)
    assert 0 < np.abs(jpeg.astype(int) - img).mean() < 6
    data = make_query(img, PEER_TRANSFORMS["noop"], rng)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == img.shape


def test_pad_sides_are_20_to_200_percent_of_each_side():
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, right, bottom, left = pt.pad_sides(H, W, rng)
        assert int(0.2 * H) <= top <= 2 * H and int(0.2 * H) <= bottom <= 2 * H
        assert int(0.2 * W) <= left <= 2 * W and int(0.2 * W) <= right <= 2 * W


def test_pad_puts_the_photo_where_the_borders_leave_it():
    white = np.full((H, W, 3), 255, np.uint8)
    for photo in range(5):
        out = pt.p_pad(white, transform_rng(0, photo, "pad20_200"))
        top, right, bottom, left = pt.pad_sides(H, W, transform_rng(0, photo, "pad20_200"))
        sx, sy = W / (W + left + right), H / (H + top + bottom)
        ys, xs = np.nonzero(out.max(axis=2) > 127)
        assert abs(xs.min() - left * sx) <= 1.5 and abs(xs.max() + 1 - (left + W) * sx) <= 1.5
        assert abs(ys.min() - top * sy) <= 1.5 and abs(ys.max() + 1 - (top + H) * sy) <= 1.5
        assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all()


def test_crop_cuts_five_percent_a_side_and_scales_back():
    img = np.zeros((H, W, 3), np.uint8)
    img[20:30, 80:90] = 255  # a square off the centre
    out = pt.p_crop(img, np.random.default_rng(0))
    dx, dy = int(0.05 * W), int(0.05 * H)
    x, y = _centroid(img)
    ex = (x + 0.5 - dx) * W / (W - 2 * dx) - 0.5
    ey = (y + 0.5 - dy) * H / (H - 2 * dy) - 0.5
    cx, cy = _centroid(out)
    assert abs(cx - ex) < 0.6 and abs(cy - ey) < 0.6
    assert abs(cx - x) > 1  # it did move away from the centre


def test_rotate_turns_4_degrees_anticlockwise_about_the_centre():
    img = np.zeros((H, W, 3), np.uint8)
    img[20:26, 95:101] = 255  # up and right of the centre
    out = pt.p_rotate(img, np.random.default_rng(0))
    x, y = _centroid(img)
    c, s = np.cos(np.radians(4)), np.sin(np.radians(4))
    ox, oy = (W - 1) / 2, (H - 1) / 2
    ex = ox + (x - ox) * c + (y - oy) * s  # anticlockwise on screen (y down)
    ey = oy - (x - ox) * s + (y - oy) * c
    cx, cy = _centroid(out)
    assert abs(cx - ex) < 0.5 and abs(cy - ey) < 0.5
    assert cy < y - 1  # a point right of the centre goes up
    assert (pt.p_rotate(np.full((H, W, 3), 200, np.uint8), None)[0, 0] == 0).all()  # type: ignore[arg-type]


def test_gamma_white_and_black_crush_the_levels():
    img = _photo()
    white = pt.p_gamma_white(img, transform_rng(0, 1, "g"))
    black = pt.p_gamma_black(img, transform_rng(0, 1, "g"))
    assert white[img > 0].min() >= 225 and np.median(white) >= 245
    assert black[img < 255].max() <= 30 and np.median(black) <= 10
    # the same draw: one is the other on the negative
    assert np.array_equal(black, 255 - pt.p_gamma_white(255 - img, transform_rng(0, 1, "g")))
    # monotone: the order of the levels survives where they stay distinct
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    g = pt.p_gamma_white(np.dstack([ramp] * 3), np.random.default_rng(3))[0, :, 0]
    assert (np.diff(g.astype(int)) >= 0).all()


def test_vignette_darkens_the_corners_not_the_centre():
    grey = np.full((H, W, 3), 200, np.uint8)
    out = pt.p_vignette(grey, np.random.default_rng(0))
    assert abs(int(out[H // 2, W // 2, 0]) - 200) <= 1
    assert 65 <= out[0, 0, 0] <= 80  # about e^-1 of it


def test_watermark_darkens_a_fifth_of_the_width_bottom_left():
    grey = np.full((180, 240, 3), 200, np.uint8)
    out = pt.p_watermark(grey, np.random.default_rng(0))
    ys, xs = np.nonzero(out[..., 0] < 200)
    assert out.min() == int(200 * 55 / 255)  # black at 200/255 opacity
    assert 0.17 * 240 <= xs.max() - xs.min() <= 0.25 * 240
    assert xs.min() < 240 * 0.15 and ys.min() > 180 / 2


def test_heavy_noise_is_heavy_and_coarse():
    grey = np.full((200, 200, 3), 128, np.uint8)
    out = pt.p_noise(grey, np.random.default_rng(0)).astype(np.float64)
    assert 35 < out.std() < 110
    # drawn at a fifth of the size: neighbours are strongly correlated
    d = out[:, 1:] - out[:, :-1]
    assert d.std() < 0.5 * out.std()


# --- the peers -------------------------------------------------------------------------

def _copy_and_stranger() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo, a copy of it (half size, blurred, JPEG 60) and an unrelated photo (BGR)."""
    img = _photo(240, 320)
    small = cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA)
    copy = jpeg_roundtrip(cv2.GaussianBlur(small, (0, 0), 1.0), 60)
    other = np.ascontiguousarray(cv2.resize(skimage.data.coffee(), (320, 240))[..., ::-1])
    return img, copy, other


def _bits_apart(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.bitwise_xor(np.frombuffer(a, np.uint8),
                                            np.frombuffer(b, np.uint8))).sum())


@pytest.mark.parametrize("factory", [peers.pdq_peer, peers.perception_phash_peer])
def test_a_peer_matches_a_copy_and_not_a_stranger(factory):
    peer = factory()
    assert peer.bits == 256 and peer.version
    img, copy, other = _copy_and_stranger()
    h = peer.hash_bgr(img)
    assert len(h) == 32 and h == peer.hash_bgr(img.copy())
    assert _bits_apart(h, peer.hash_bgr(copy)) <= peer.threshold
    assert _bits_apart(h, peer.hash_bgr(other)) > peer.threshold
    with pytest.raises(ValueError):
        peer.hash_bgr(img[..., 0])


def test_the_peers_documented_rules():
    assert peers.pdq_peer().threshold == 31  # Meta: distance <= 31 of 256 bits
    phash = peers.perception_phash_peer()
    assert phash.threshold == 51  # perception: distance / 256 < 0.2
    assert 51 / 256 < peers.PHASH16_THRESHOLD <= 52 / 256


def test_perception_phash_is_perceptions_own_hash():
    """The adapter packs perception's own vector, bit for bit (RGB order)."""
    from perception.hashers import PHash

    img = _photo(120, 160)
    vec = PHash(hash_size=16).compute(np.ascontiguousarray(img[..., ::-1]),
                                      hash_format="vector")
    assert peers.perception_phash_peer().hash_bgr(img) == np.packbits(vec).tobytes()


def test_peer_index_search_is_an_exact_hamming_scan():
    rng = np.random.default_rng(123)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    index = peers.PeerIndex(256)
    for n, c in enumerate(codes):
        index.add(f"k{n}", c.tobytes())
    q = codes[17].copy()
    q[:3] ^= 0b1011  # 9 bits away from row 17
    found = index.search(q.tobytes(), 5)
    dist = np.unpackbits(np.bitwise_xor(codes, q), axis=1).sum(axis=1)
    assert found[0] == ("k17", 9)
    assert [d for _, d in found] == sorted(dist)[:5]
    assert all(dist[int(k[1:])] == d for k, d in found)
    assert peers.PeerIndex(256).search(q.tobytes(), 5) == []
    with pytest.raises(ValueError):
        index.add("short", b"\0" * 8)


def test_load_peers_says_why_a_peer_is_skipped(monkeypatch):
    loaded, skipped = peers.load_peers()
    assert [p.name for p in loaded] == ["pdq", "perception_phash"] and skipped == {}
    monkeypatch.setitem(sys.modules, "pdqhash", None)  # as if it were not installed
    loaded, skipped = peers.load_peers()
    assert [p.name for p in loaded] == ["perception_phash"]
    assert set(skipped) == {"pdq"} and "not installed" in skipped["pdq"]
    assert "pdqhash" in skipped["pdq"]


def test_hamming_threshold_at_fmr():
    f = peer_suite.hamming_threshold_at_fmr
    dists = list(range(100, 200))  # 100 negatives, nearest 100 bits away
    assert f(dists, 0.01) == 100  # lets exactly one through
    assert f(dists, 0.0) == 99
    assert f([5, 5, 5], 0.01) == 4
    assert f([0, 9], 0.0) == -1
    with pytest.raises(ValueError):
        f([], 0.01)


# --- the benchmark with and without the peers -------------------------------------------

@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peers") / "photos"
    bench_photo_folder(folder)
    return folder


def _run(photo_folder, out, limit):
    return runner.run_benchmark(photo_folder, out, limit=limit, scale=(), seed_subset=(0, 0),
                                latency_queries=2, progress=False, command=["test"])


def test_benchmark_runs_beside_the_peers(photo_folder, tmp_path):
    result = _run(photo_folder, tmp_path / "out", 2)
    suite = result["peers"]
    n_t = len(PEER_TRANSFORMS)
    assert suite["copies"] == 2 * n_t and suite["negatives"] == 2 * n_t
    assert suite["skipped"] == {}
    assert list(suite["methods"]) == ["echoimage", "pdq", "perception_phash"]
    for name, m in suite["methods"].items():
        assert set(m["by_transform"]) == set(PEER_TRANSFORMS)
        assert m["by_transform"]["noop"]["recall_at_1"] == 1.0, name
        assert m["copy_query_ms"]["p50"] > 0 and m["no_copy_query_ms"]["p50"] > 0
        # 22 negatives: a threshold at 1% false matches lets none through
        assert m["false_match_rate_calibrated"] == 0.0, name
    assert suite["methods"]["echoimage"]["by_transform"]["noop"]["recall_at_1_match"] == 1.0
    pdq = suite["methods"]["pdq"]
    assert pdq["documented_threshold"] == 31 and pdq["catalogue"]["entries"] == 10
    assert pdq["by_transform"]["jpeg95"]["recall_at_1_match"] == 1.0
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "## Peers: perception's benchmark transforms" in md
    assert "| PDQ (≤ 31) | PDQ @1% FMR |" in md and "perception PHash16 (≤ 51)" in md
    assert "| ms per no-copy query (p50) |" in md and "Peers skipped" not in md


def test_benchmark_without_the_peer_packages(photo_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pdqhash", None)
    monkeypatch.setitem(sys.modules, "perception", None)
    monkeypatch.setitem(sys.modules, "perception.hashers", None)
    result = _run(photo_folder, tmp_path / "out", 1)
    suite = result["peers"]
    assert list(suite["methods"]) == ["echoimage"]
    assert set(suite["skipped"]) == {"pdq", "perception_phash"}
    assert suite["methods"]["echoimage"]["by_transform"]["noop"]["recall_at_1"] == 1.0
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "Peers skipped: pdq: not installed" in md and "EchoImage (verdict)" in md


def test_suite_queries_are_copies_then_negatives_under_the_same_transforms(tmp_path):
    from echoimage_bench.context import Log, RunContext

    paths = []
    for n, name in enumerate(("astronaut", "coffee", "chelsea")):
        rgb = cv2.resize(getattr(skimage.data, name)(), (96, 72))
        paths.append(tmp_path / f"{n}.jpg")
        cv2.imwrite(str(paths[-1]), np.ascontiguousarray(rgb[..., ::-1]))
    cat = paths[:2]

    def queries():
        ctx = RunContext(log=Log(False), seed=0, settings=None, catalogue=cat,
                   urls=[str(p) for p in cat], url_ids={}, query_photos=[0, 1])
        return list(peer_suite.suite_queries(ctx, list(PEER_TRANSFORMS.values()),
                                             [paths[2]]))

    got = queries()
    n_t = len(PEER_TRANSFORMS)
    assert len(got) == 3 * n_t
    assert [q.truth for q in got[:2 * n_t]] == [str(cat[0])] * n_t + [str(cat[1])] * n_t
    assert all(q.truth is None and q.photo == "2.jpg" for q in got[2 * n_t:])
    assert [q.transform for q in got[2 * n_t:]] == list(PEER_TRANSFORMS)
    assert [q.data for q in got] == [q.data for q in queries()]  # seeded
    assert all(q.data[:3] == b"\xff\xd8\xff" for q in got)
