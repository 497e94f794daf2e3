"""Colour: the decoder's colour version, the colour signature and colour_distance (copies
that keep their colours stay close, recolourings are far), and the stored preview."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import (
    MAX_PIXELS,
    WORK_SIZE,
    cmyk_jpeg,
    exif_rotated_jpeg,
    indexed_features,
    jpeg,
    photo,
    png,
    png16,
)
from PIL import Image

from echoimage.config import Settings
from echoimage.features.colour import (
    SIGNATURE_BYTES,
    colour_distance,
    colour_histogram,
    colour_signature,
)
from echoimage.features.decode import decode_image
from echoimage.store.codec import encode_preview

SIZE = Settings().colour_size
COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def rgb_of(data: bytes) -> np.ndarray:
    """The decoder's colour version of image bytes."""
    img = decode_image(data, MAX_PIXELS, WORK_SIZE, colour_size=SIZE)
    assert img.colour is not None
    return img.colour


def sig(rgb: np.ndarray) -> bytes:
    return colour_signature(np.ascontiguousarray(rgb))


def hue_turn(rgb: np.ndarray, degrees: int) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(int) + degrees * 256 // 360) % 256).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def gray3(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


# --- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_colour_version_leaves_the_gray_image_bit_for_bit(name: str) -> None:
    data = jpeg(photo(name))
    plain = decode_image(data, MAX_PIXELS, WORK_SIZE)
    coloured = decode_image(data, MAX_PIXELS, WORK_SIZE, colour_size=SIZE)
    assert plain.colour is None
    np.testing.assert_array_equal(plain.gray, coloured.gray)
    c = coloured.colour
    assert c is not None and c.dtype == np.uint8 and c.shape[2] == 3 and max(c.shape[:2]) == SIZE
    # same picture: its luma agrees with the working image brought to the same size
    small = cv2.resize(plain.gray, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY).astype(int) - small).mean() < 4


def test_colour_version_follows_exif_orientation() -> None:
    rgb = np.ascontiguousarray(photo("astronaut")[:, :400])  # 512 high, 400 wide
    stored = np.ascontiguousarray(np.rot90(rgb, 1))  # stored on its side; EXIF 6 turns it back
    img = decode_image(exif_rotated_jpeg(stored, 6), MAX_PIXELS, WORK_SIZE, colour_size=SIZE)
    assert img.colour is not None and img.gray.shape == (512, 400)
    assert img.colour.shape == (SIZE, round(SIZE * 400 / 512), 3)
    upright = cv2.resize(rgb, (img.colour.shape[1], SIZE), interpolation=cv2.INTER_AREA)
    assert np.abs(img.colour.astype(int) - upright).mean() < 6


def test_colour_version_of_other_modes() -> None:
    rgb = photo("coffee")
    # CMYK JPEG: converted, colours kept
    cmyk = rgb_of(cmyk_jpeg(rgb))
    assert colour_distance(sig(cmyk), sig(rgb)) < 0.1
    # transparency flattened onto white
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:32, :, :3] = (200, 30, 30)
    rgba[:32, :, 3] = 255
    flat = rgb_of(png(Image.fromarray(rgba, "RGBA")))
    assert tuple(flat[-1, -1]) == (255, 255, 255) and flat[0, 0, 0] > 150 > flat[0, 0, 1]
    # palette image
    pal = rgb_of(png(Image.fromarray(rgb).convert("P")))
    assert colour_distance(sig(pal), sig(rgb)) < 0.2
    # 16-bit gray: three equal channels
    g16 = rgb_of(png16(photo("camera").astype(np.uint16) * 257))
    assert np.array_equal(g16[..., 0], g16[..., 1]) and np.array_equal(g16[..., 1], g16[..., 2])


def test_features_carry_the_colour_and_its_signature() -> None:
    data = jpeg(photo("rocket"))
    f = indexed_features(data, SIZE)
    assert f.colour is not None and f.colour_signature == colour_signature(f.colour)
    g = indexed_features(data)
    assert g.colour is None and g.colour_signature is None


def test_preview_is_a_small_colour_jpeg() -> None:
    c = rgb_of(jpeg(photo("astronaut")))
    data = encode_preview(c, Settings().colour_quality)
    assert data[:2] == b"\xff\xd8" and 1000 < len(data) < 12_000
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert back.shape == c.shape and np.abs(back.astype(int) - c).mean() < 8
    with pytest.raises(ValueError):
        encode_preview(c[..., 0], 70)


# --- signature and distance ---------------------------------------------------------------


def test_signature_format_and_distance_range() -> None:
    s = sig(photo("coffee"))
    assert len(s) == SIGNATURE_BYTES <= 64
    assert colour_distance(s, s) == 0.0
    h = colour_histogram(photo("coffee"))
    assert h.sum() == pytest.approx(1.0) and (h >= 0).all()
    far = colour_distance(sig(np.full((32, 32, 3), (255, 0, 0), np.uint8)),
                          sig(np.full((32, 32, 3), (0, 200, 255), np.uint8)))
    assert 0.95 <= far <= 1.0
    with pytest.raises(ValueError, match="signature"):
        colour_distance(s[:-1], s)
    with pytest.raises(ValueError, match="covered"):
        colour_distance(s, s, 0.0)
    with pytest.raises(ValueError, match="RGB"):
        colour_signature(photo("camera"))


def _keeps_colours(rgb: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
    """Copies that keep the colours, with the share of the original each one shows."""
    h, w = rgb.shape[:2]
    jpeg30 = cv2.imdecode(np.frombuffer(jpeg(rgb, 30), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    banner = rgb.copy()
    banner[-h // 7:] = (banner[-h // 7:] * 0.25 + 15).astype(np.uint8)
    return {
        "jpeg30": (jpeg30, 1.0),
        "half size": (cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA), 1.0),
        "mirror": (rgb[:, ::-1], 1.0),
        "quarter turn": (np.rot90(rgb), 1.0),
        "brighter": (np.clip(rgb * 1.2 + 10, 0, 255).astype(np.uint8), 1.0),
        "darker": ((rgb * 0.6).astype(np.uint8), 1.0),
        "banner": (banner, 1.0),
        "crop 60%": (rgb[h // 5: h // 5 + 3 * h // 5, w // 5: w // 5 + 3 * w // 5], 0.36),
        "corner crop 40%": (rgb[: 2 * h // 5, : 2 * w // 5], 0.16),
    }


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_copies_that_keep_colours_stay_close(name: str) -> None:
    rgb = photo(name)
    original = sig(rgb)
    for what, (copy, covered) in _keeps_colours(rgb).items():
        d = colour_distance(sig(copy), original, covered)
        assert d < 0.15, (what, d)


@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_recolourings_are_far(name: str) -> None:
    rgb = photo(name)
    original = sig(rgb)
    threshold = Settings().colour_threshold
    far = {"hue +120": hue_turn(rgb, 120), "hue +180": hue_turn(rgb, 180),
           "channels swapped": np.ascontiguousarray(rgb[..., [1, 2, 0]]),
           "grayscale": gray3(rgb)}
    for what, copy in far.items():
        d = colour_distance(sig(copy), original)
        assert d > threshold + 0.1, (what, d)
    # a part of a recoloured copy is far too, though the part is compared as such
    h, w = rgb.shape[:2]
    part = hue_turn(rgb, 120)[h // 5: h // 5 + 3 * h // 5, w // 5: w // 5 + 3 * w // 5]
    assert colour_distance(sig(part), original, 0.36) > threshold


def test_a_recoloured_product_is_as_far_as_the_share_it_covers() -> None:
    """A red product on a white backdrop turned blue. The distance is the share of the
    picture whose colour changed: a product covering 40% is far, one covering 10% is not
    (a limit of a whole-picture signature, see README "Colour")."""
    rng = np.random.default_rng(0)
    scene = np.clip(rng.normal(235, 4, (120, 160, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    threshold = Settings().colour_threshold
    for (y0, y1, x0, x1), far in (((20, 100, 30, 130), True), ((40, 70, 60, 100), False)):
        red, blue = scene.copy(), scene.copy()
        red[y0:y1, x0:x1] = (200, 30, 40)
        blue[y0:y1, x0:x1] = (40, 60, 200)
        share = (y1 - y0) * (x1 - x0) / (120 * 160)
        d = colour_distance(sig(blue), sig(red))
        assert d == pytest.approx(share, abs=0.03) and (d > threshold) is far
        assert colour_distance(sig(red[::-1]), sig(red)) < 0.02
