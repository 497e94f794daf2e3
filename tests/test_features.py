"""Pure feature functions: golden values, invariance, parameter checks, SSIM, dihedral group.

Golden values live in tests/data/golden.json; `scripts/regenerate_golden.py` rewrites them
when a change is meant to change them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import (
    MAX_PIXELS,
    WORK_SIZE,
    extra_photos,
    jpeg,
    jpeg_roundtrip,
    photo,
    png,
    resize,
    rot90,
    rotate,
    to_gray,
)
from skimage.metrics import structural_similarity

from echoimage.config import Settings
from echoimage.features.decode import decode_image
from echoimage.features.dihedral import NAMES, is_mirror, orient
from echoimage.features.extract import extract_features
from echoimage.features.hashes import (
    HASH_BYTES,
    dhash,
    from_hex,
    hamming,
    hash_input,
    oriented_phashes,
    phash,
    to_hex,
)
from echoimage.features.orb import EMPTY_ORB, orb_features
from echoimage.features.thumbnail import thumbnail
from echoimage.search.rerank import SsimReference, ssim

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden.json").read_text())

CAMERA = photo("camera")


def ph(gray: np.ndarray) -> bytes:
    """pHash of a grayscale array."""
    return phash(hash_input(gray))


# --- golden values ----------------------------------------------------------------------

def test_golden_image_is_the_pinned_one() -> None:
    assert GOLDEN["image"] == "skimage.data.camera"
    assert list(CAMERA.shape) == GOLDEN["shape"]


def test_golden_hashes() -> None:
    small = hash_input(CAMERA)
    assert to_hex(phash(small)) == GOLDEN["phash"]
    assert to_hex(dhash(small)) == GOLDEN["dhash"]
    assert [to_hex(h) for h in oriented_phashes(small)] == GOLDEN["oriented_phashes"]


def test_golden_orb_counts() -> None:
    assert len(orb_features(CAMERA, 500)) == GOLDEN["orb_keypoints"]
    assert len(orb_features(CAMERA, 100)) == GOLDEN["orb_keypoints_100"]
    tiny = cv2.resize(CAMERA, (96, 96), interpolation=cv2.INTER_AREA)
    assert len(orb_features(tiny, 500)) == GOLDEN["orb_keypoints_96px"]


def test_golden_thumbnail_means() -> None:
    assert float(thumbnail(CAMERA, 256).mean()) == pytest.approx(GOLDEN["thumbnail_mean"],
                                                                  abs=1e-3)
    assert float(thumbnail(CAMERA, 64).mean()) == pytest.approx(GOLDEN["thumbnail_64_mean"],
                                                                 abs=1e-3)


def test_extract_features_matches_golden_through_the_decoder() -> None:
    feats = extract_features(decode_image(png(CAMERA), MAX_PIXELS, WORK_SIZE), 256, 500)
    assert to_hex(feats.phash) == GOLDEN["phash"]
    assert to_hex(feats.dhash) == GOLDEN["dhash"]
    assert len(feats.orb) == GOLDEN["orb_keypoints"]
    assert float(feats.thumbnail.mean()) == pytest.approx(GOLDEN["thumbnail_mean"], abs=1e-3)
    assert (feats.width, feats.height, feats.format, feats.work_scale) == (512, 512, "PNG",
                                                                           1.0)


# --- invariance -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["camera", "astronaut", "coffee"])
@pytest.mark.parametrize("transform", ["resize0.9", "jpeg50", "rot+1", "rot-1"])
def test_small_changes_stay_close(name: str, transform: str) -> None:
    gray = to_gray(photo(name))
    changed = {
        "resize0.9": lambda: resize(gray, 0.9),
        "jpeg50": lambda: to_gray(jpeg_roundtrip(photo(name), 50)),
        "rot+1": lambda: rotate(gray, 1),
        "rot-1": lambda: rotate(gray, -1),
    }[transform]()
    assert hamming(ph(gray), ph(changed)) <= 8


@pytest.mark.parametrize("other", extra_photos("camera"))
def test_different_images_are_far(other: str) -> None:
    assert hamming(ph(CAMERA), ph(to_gray(photo(other)))) >= 20


@pytest.mark.parametrize("k", [1, 2, 3])
def test_quarter_turns_differ_but_oriented_hashes_recover(k: int) -> None:
    turned = rot90(CAMERA, k)
    assert hamming(ph(CAMERA), ph(turned)) > 10
    oriented = oriented_phashes(hash_input(turned))
    assert min(hamming(ph(CAMERA), h) for h in oriented) <= 4
    # the orientation that recovers it is the inverse turn
    assert hamming(ph(CAMERA), oriented[(4 - k) % 4]) <= 4


def test_mirror_recovered_by_mirror_orientation() -> None:
    mirrored = np.ascontiguousarray(CAMERA[:, ::-1])
    assert hamming(ph(CAMERA), ph(mirrored)) > 10
    assert hamming(ph(CAMERA), oriented_phashes(hash_input(mirrored))[4]) <= 4


def test_hash_length_and_dtype() -> None:
    small = hash_input(CAMERA)
    assert small.shape == (32, 32) and small.dtype == np.float32
    for h in (phash(small), dhash(small)):
        assert isinstance(h, bytes) and len(h) == HASH_BYTES


# --- value-object helpers ---------------------------------------------------------------

def test_hex_round_trip() -> None:
    for h in [ph(CAMERA), dhash(hash_input(CAMERA)), bytes(8), b"\xff" * 8]:
        s = to_hex(h)
        assert len(s) == 16 and s == s.lower()
        assert from_hex(s) == h


def test_hamming() -> None:
    assert hamming(bytes(8), bytes(8)) == 0
    assert hamming(bytes(8), b"\xff" * 8) == 64
    assert hamming(b"\x01" + bytes(7), bytes(8)) == 1
    h = ph(CAMERA)
    assert hamming(h, h) == 0


def test_hamming_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        hamming(bytes(8), bytes(16))


def test_hamming_is_symmetric_and_matches_popcount() -> None:
    rng = np.random.RandomState(123)
    for _ in range(50):
        a, b = rng.bytes(8), rng.bytes(8)
        expected = bin(int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).count("1")
        assert hamming(a, b) == hamming(b, a) == expected


# --- parameter checks -------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: hash_input(np.zeros((32, 32, 3), np.uint8)),
    lambda: phash(np.zeros((16, 16), np.float32)),
    lambda: dhash(np.zeros((32, 33), np.float32)),
    lambda: thumbnail(CAMERA, 7),
    lambda: thumbnail(CAMERA.astype(np.float32), 256),
    lambda: thumbnail(np.zeros((32, 32, 3), np.uint8), 256),
    lambda: orb_features(CAMERA, 0),
    lambda: orb_features(CAMERA.astype(np.float32), 500),
    lambda: orb_features(np.zeros((64, 64, 3), np.uint8), 500),
    lambda: orient(CAMERA, 8),
    lambda: orient(CAMERA, -1),
    lambda: ssim(np.zeros((16, 16), np.uint8), np.zeros((16, 17), np.uint8)),
    lambda: Settings(thumb_size=0),
    lambda: Settings(max_pixels=-1),
    lambda: Settings(shortlist_k=0),
], ids=["hash_input-3d", "phash-shape", "dhash-shape", "thumb-size", "thumb-float",
        "thumb-3d", "orb-n0", "orb-float", "orb-3d", "orient-8", "orient-neg", "ssim-shape",
        "settings-thumb", "settings-pixels", "settings-k"])
def test_bad_parameters_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


# --- thumbnail and ORB ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(512, 512), (300, 451), (100, 40), (8, 8)])
def test_thumbnail_shape_and_dtype(shape: tuple[int, int]) -> None:
    gray = cv2.resize(CAMERA, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    for size in (256, 64):
        t = thumbnail(gray, size)
        assert t.shape == (size, size) and t.dtype == np.uint8


def test_thumbnail_of_flat_image_is_flat() -> None:
    t = thumbnail(np.full((100, 300), 77, np.uint8), 256)
    assert (t == 77).all()


def test_orb_on_flat_image_is_empty_not_none() -> None:
    for gray in (np.full((200, 200), 128, np.uint8), np.zeros((64, 64), np.uint8)):
        orb = orb_features(gray, 500)
        assert orb is not None
        assert len(orb) == 0
        assert orb.keypoints.shape == (0, 5) and orb.keypoints.dtype == np.float32
        assert orb.descriptors.shape == (0, 32) and orb.descriptors.dtype == np.uint8
    assert len(EMPTY_ORB) == 0


def test_orb_shapes_and_pairing() -> None:
    orb = orb_features(CAMERA, 200)
    assert 0 < len(orb) <= 200
    assert orb.keypoints.shape == (len(orb), 5) and orb.keypoints.dtype == np.float32
    assert orb.descriptors.shape == (len(orb), 32) and orb.descriptors.dtype == np.uint8
    responses = orb.keypoints[:, 4]
    assert responses[0] == responses.max()  # the strongest keypoint leads in any order
    xs, ys = orb.keypoints[:, 0], orb.keypoints[:, 1]
    assert (xs >= 0).all() and (xs < 512).all() and (ys >= 0).all() and (ys < 512).all()
    # whatever the order, each keypoint keeps its own descriptor: compare with raw OpenCV
    raw = cv2.ORB_create(nfeatures=200, fastThreshold=12, edgeThreshold=15, patchSize=31)
    kps, desc = raw.detectAndCompute(CAMERA, None)
    expected = {(round(k.pt[0], 2), round(k.pt[1], 2), round(k.size, 2), round(k.angle, 2)):
                desc[i].tobytes() for i, k in enumerate(kps)}
    got = {tuple(round(float(v), 2) for v in kp[:4]): d.tobytes()
           for kp, d in zip(orb.keypoints, orb.descriptors, strict=True)}
    assert got == expected


def test_orb_is_deterministic() -> None:
    a, b = orb_features(CAMERA, 500), orb_features(CAMERA.copy(), 500)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.descriptors, b.descriptors)


# --- SSIM -------------------------------------------------------------------------------

def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=255))


def _ssim_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.RandomState(123)
    t_cam = thumbnail(CAMERA, 256)
    return [
        ("same", t_cam, t_cam.copy()),
        ("jpeg30", t_cam, thumbnail(to_gray(jpeg_roundtrip(CAMERA, 30)), 256)),
        ("other", t_cam, thumbnail(to_gray(photo("astronaut")), 256)),
        ("shifted", t_cam, np.roll(t_cam, 3, axis=1)),
        ("noise", rng.randint(0, 256, (64, 80)).astype(np.uint8),
         rng.randint(0, 256, (64, 80)).astype(np.uint8)),
        ("flat-vs-flat", np.zeros((32, 32), np.uint8), np.full((32, 32), 255, np.uint8)),
        ("inverted", t_cam, 255 - t_cam),
    ]


@pytest.mark.parametrize("label,a,b", _ssim_pairs(), ids=[p[0] for p in _ssim_pairs()])
def test_ssim_equals_skimage(label: str, a: np.ndarray, b: np.ndarray) -> None:
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-4)


def test_ssim_is_symmetric_and_bounded() -> None:
    a = thumbnail(CAMERA, 256)
    b = thumbnail(to_gray(photo("coffee")), 256)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= ssim(a, b) < 0.5


def test_ssim_compares_alike_in_threads_and_across_shapes() -> None:
    """compare works in per-thread scratch planes: threads comparing at once and shapes
    changing between calls give exactly the values of one-at-a-time calls."""
    pairs = [(a, b) for _, a, b in _ssim_pairs()] * 6
    refs = [SsimReference(a) for a, _ in pairs]
    serial = [r.compare(b) for r, (_, b) in zip(refs, pairs, strict=True)]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda i: refs[i].compare(pairs[i][1]), range(len(pairs))))
    assert threaded == serial
    assert serial[:7] == [_ssim_in_new_arrays(a, b) for _, a, b in _ssim_pairs()]


def _ssim_in_new_arrays(a: np.ndarray, b: np.ndarray) -> float:
    """The same formula, every step in a new array (the order of its float32 operations)."""
    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float32), b.astype(np.float32)
    mx, my = blur(x), blur(y)
    mxx, myy, mxy = mx * mx, my * my, mx * my
    vx, vy, cxy = blur(x * x) - mxx, blur(y * y) - myy, blur(x * y) - mxy
    num = (2 * mxy + c1) * (2 * cxy + c2)
    den = (mxx + myy + c1) * (vx + vy + c2)
    return float((num / den)[5:-5, 5:-5].mean())


# --- dihedral orientations --------------------------------------------------------------

def test_dihedral_orientations_distinct_with_inverses() -> None:
    a = np.arange(12, dtype=np.int32).reshape(3, 4)  # no symmetry at all
    images = [orient(a, o) for o in range(8)]
    keys = {(im.shape, im.tobytes()) for im in images}
    assert len(keys) == 8
    for o in range(8):
        inverses = [p for p in range(8) if np.array_equal(orient(images[o], p), a)]
        assert len(inverses) == 1, (o, inverses)
        p = inverses[0]
        assert np.array_equal(orient(orient(a, p), o), a)  # a two-sided inverse
        assert is_mirror(p) == is_mirror(o)


def test_dihedral_names_and_meaning() -> None:
    a = np.arange(12).reshape(3, 4)
    assert len(NAMES) == 8 and len(set(NAMES)) == 8
    assert np.array_equal(orient(a, 0), a)
    assert np.array_equal(orient(a, NAMES.index("rot90")), np.rot90(a))
    assert np.array_equal(orient(a, NAMES.index("mirror")), a[:, ::-1])
    assert np.array_equal(orient(a, NAMES.index("mirror+rot90")), np.rot90(a[:, ::-1]))
    assert [is_mirror(o) for o in range(8)] == [False] * 4 + [True] * 4


def test_dihedral_closed_under_composition() -> None:
    a = np.arange(12).reshape(3, 4)
    images = [orient(a, o) for o in range(8)]
    for o in range(8):
        for p in range(8):
            composed = orient(images[o], p)
            assert any(np.array_equal(composed, im) for im in images)


def test_orient_returns_contiguous_copy() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for o in range(8):
        out = orient(a, o)
        assert out.flags["C_CONTIGUOUS"]


def test_hashes_come_from_the_thumbnail_and_work_results_split_their_cpu_time() -> None:
    """One resize chain: a reduced image's hashes are the thumbnail's; a work result's CPU
    time is split by stage, the stages adding up to it (a failure's too)."""
    from echoimage.indexing.work import FeatureParams, process_bytes
    from echoimage.types import Status

    settings = Settings()
    data = jpeg(photo("astronaut"))
    img = decode_image(data, settings.max_pixels, settings.work_size, settings.colour_size)
    feats = extract_features(img, settings.thumb_size, settings.orb_features)
    small = hash_input(feats.thumbnail)
    assert (feats.phash, feats.dhash) == (phash(small), dhash(small))
    direct = hash_input(img.gray)  # the image's own 32x32: all but the rounding alike
    assert hamming(feats.phash, phash(direct)) <= 2

    params = FeatureParams.from_settings(settings)
    res = process_bytes(1, data, params)
    assert res.status == Status.INDEXED and res.stages is not None
    assert set(res.stages) == {"sha256", "decode", "thumbnail", "hashes", "orb",
                               "colour signature", "encode"}
    assert sum(res.stages.values()) == pytest.approx(res.cpu_s)
    bad = process_bytes(2, b"plain text, not an image", params)
    assert bad.status == Status.NOT_AN_IMAGE and bad.stages is not None
    assert set(bad.stages) == {"sha256", "decode"}
    assert sum(bad.stages.values()) == pytest.approx(bad.cpu_s)
