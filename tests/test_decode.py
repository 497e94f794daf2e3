"""Bad and unusual input, on the decoder itself, the index path and the query path.

Index path: a build (`Catalogue.build`) over a directory where every case sits beside good
images; a bad file ends with a non-indexed status and a one-line reason, the rest are
indexed and the run does not raise. Query path: `echoimage query --json` with every case and
good queries; a bad query prints `{"query", "error"}`, the others get results, exit code 1.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    MAX_PIXELS,
    WORK_SIZE,
    animated_gif,
    avif,
    big_png,
    bomb_png,
    build_index,
    cmyk_jpeg,
    encode,
    exif_rotated,
    exif_rotated_jpeg,
    heic,
    jpeg,
    photo,
    png,
    png16,
    rot90,
    to_gray,
    write,
)
from PIL import Image

from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.errors import DecodeError, ImageTooLargeError
from echoimage.features.decode import decode_image
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import Status

pytestmark = pytest.mark.usefixtures("no_network")

# 9000 x 7000 = 63,000,000 pixels: valid and under the default cap of 64,000,000
HUGE_W, HUGE_H = 9000, 7000


def _noise(n: int, seed: int = 0) -> bytes:
    return np.random.RandomState(seed).bytes(n)


@functools.cache
def _bomb() -> bytes:
    return bomb_png(30000, 30000)


@functools.cache
def _huge() -> bytes:
    row = (np.arange(HUGE_W) * 7 % 256).astype(np.uint8).tobytes()
    return big_png(HUGE_W, HUGE_H, row)


def _half(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _rgba_rocket() -> np.ndarray:
    rgb = photo("rocket")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :48] = 0  # a fully transparent strip on the left …
    alpha[:40, :] = 128  # … and a half-transparent one on top
    return np.dstack([rgb, alpha])


def _animated() -> bytes:
    # frame 0 is chelsea; the later frames are other catalogue photos
    frames = [photo("chelsea"), photo("rocket")[:300, :451], photo("coffee")[:300, :451]]
    return animated_gif(frames)


@dataclass(frozen=True)
class Case:
    """One input class: its file, what the index should record and what a query should find."""

    filename: str
    make: Callable[[], bytes]
    status: str
    reason: str | None = None  # a substring of the one-line reason of a failure
    like: str | None = None  # the catalogue photo a query with this file should find first
    size: tuple[int, int] | None = None  # (width, height) the store should record

    @property
    def ok(self) -> bool:
        return self.status == Status.INDEXED


CASES = [
    Case("corrupt.jpg", lambda: b"\xff\xd8\xff\xe0" + _noise(4000), Status.DECODE_ERROR,
         "corrupt"),
    Case("corrupt-png.png", lambda: b"\x89PNG\r\n\x1a\n" + _noise(4000, 1),
         Status.DECODE_ERROR, "corrupt"),
    Case("garbage.png", lambda: _noise(4000, 2), Status.NOT_AN_IMAGE,
         "not an image (no image format known)"),
    Case("truncated.jpg", lambda: jpeg(photo("coffee"))[:20000], Status.DECODE_ERROR,
         "truncated"),
    Case("empty.jpg", lambda: b"", Status.NOT_AN_IMAGE, "empty"),
    Case("bomb.png", _bomb, Status.TOO_LARGE, "too large"),
    Case("html.jpg", lambda: b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1>"
         b"</body></html>\n", Status.NOT_AN_IMAGE, "not an image"),
    Case("notes.jpg", lambda: b"shopping list\n- eggs\n- milk\n" * 20, Status.NOT_AN_IMAGE,
         "not an image (looks like text)"),
    Case("tiny.png", lambda: png(np.full((1, 1, 3), 200, np.uint8)), Status.DECODE_ERROR,
         "too small"),
    Case("animated.gif", _animated, Status.INDEXED, like="chelsea", size=(451, 300)),
    Case("16bit.png", lambda: png16(photo("camera").astype(np.uint16) * 257), Status.INDEXED,
         like="camera", size=(512, 512)),
    Case("cmyk.jpg", lambda: cmyk_jpeg(photo("coffee")), Status.INDEXED, like="coffee",
         size=(600, 400)),
    Case("rgba.png", lambda: png(_rgba_rocket()), Status.INDEXED, like="rocket",
         size=(640, 427)),
    # stored turned a quarter anticlockwise; Orientation=6 turns it back upright
    Case("exif6.jpg", lambda: exif_rotated_jpeg(rot90(photo("astronaut")), 6),
         Status.INDEXED, like="astronaut", size=(512, 512)),
    Case("exif6-wide.jpg", lambda: exif_rotated_jpeg(rot90(photo("chelsea")), 6),
         Status.INDEXED, like="chelsea", size=(451, 300)),
    Case("palette.png", lambda: png(Image.fromarray(photo("clock")).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=64)), Status.INDEXED, like="clock",
         size=(400, 300)),
    Case("gray.jpg", lambda: jpeg(to_gray(photo("coffee"))), Status.INDEXED, like="coffee",
         size=(600, 400)),
    Case("huge.png", _huge, Status.INDEXED, size=(HUGE_W, HUGE_H)),
    # HEIC (an iPhone's photos) and AVIF, upright and turned by their EXIF orientation
    Case("photo.heic", lambda: heic(photo("coffee")), Status.INDEXED, like="coffee",
         size=(600, 400)),
    Case("exif6.heic", lambda: exif_rotated(rot90(photo("chelsea")), 6, "HEIC"),
         Status.INDEXED, like="chelsea", size=(451, 300)),
    Case("photo.avif", lambda: avif(photo("rocket")), Status.INDEXED, like="rocket",
         size=(640, 427)),
    Case("exif6.avif", lambda: exif_rotated(rot90(photo("coffee")), 6, "AVIF"),
         Status.INDEXED, like="coffee", size=(600, 400)),
    Case("truncated.heic", lambda: _half(heic(photo("clock"))), Status.DECODE_ERROR,
         "HEIC"),
    Case("corrupt.avif", lambda: _half(avif(photo("clock"))), Status.DECODE_ERROR, "AVIF"),
    # a format no installed decoder reads: the reason names it
    Case("photo.jxl", lambda: b"\xff\x0a" + _noise(3000, 3), Status.DECODE_ERROR,
         "JPEG XL"),
]
FAILURES = [c for c in CASES if not c.ok]
VALID = [c for c in CASES if c.ok]
GOOD = ("astronaut", "rocket", "camera")


def _ids(cases: list[Case]) -> list[str]:
    return [c.filename for c in cases]


def _one_line(msg: str) -> None:
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)


# --- the decoder ------------------------------------------------------------------------

@pytest.mark.parametrize("case", FAILURES, ids=_ids(FAILURES))
def test_decoder_rejects_with_one_line_reason(case: Case) -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(case.make(), MAX_PIXELS, WORK_SIZE)
    _one_line(str(info.value))
    assert case.reason in str(info.value)


@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_decoder_accepts(case: Case) -> None:
    img = decode_image(case.make(), MAX_PIXELS, WORK_SIZE)
    assert (img.width, img.height) == case.size
    assert img.gray.dtype == np.uint8 and img.gray.ndim == 2
    assert max(img.gray.shape) == min(512, max(case.size))


def test_bomb_is_rejected_from_the_header() -> None:
    data = _bomb()
    assert len(data) < 2_000_000  # 900 megapixels in under 2 MB
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode_image(data, MAX_PIXELS, WORK_SIZE)
    assert time.perf_counter() - t0 < 1.0  # no pixel was decoded


def test_bomb_under_pillows_guard_is_refused_by_our_cap() -> None:
    data = big_png(9000, 9000, bytes(9000))  # 81 Mpixel: under Pillow's guard, over our cap
    with pytest.raises(ImageTooLargeError, match="9000x9000"):
        decode_image(data, MAX_PIXELS, WORK_SIZE)


def test_importing_leaves_pillow_settings_alone() -> None:
    """Importing EchoImage must not switch off Pillow's decompression-bomb guard (or any other
    process-wide Pillow setting) of the program that imports it."""
    code = (
        "from PIL import Image, ImageFile\n"
        "before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
        "import echoimage.features.decode, echoimage.indexing.build, echoimage.search.engine\n"
        "import echoimage.web.app, echoimage.cli\n"
        "after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
        "assert before == after, (before, after)\n"
        "assert 'HEIF' not in Image.OPEN, 'the HEIF opener was registered on import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_pillows_own_guard_is_a_too_large_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host program that lowered Pillow's guard below our cap gets the same kind of error."""
    data = png(photo("coffee"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode_image(data, MAX_PIXELS, WORK_SIZE)


def test_one_pixel_cap_one_message() -> None:
    """An image over the cap gets the cap's message whichever check refused it: ours (81
    Mpixel, under Pillow's default guard) or Pillow's (200 Mpixel, over it: it used to
    say "Image size (200000000 pixels) exceeds limit of 178956970 pixels")."""
    with pytest.raises(ImageTooLargeError) as first:
        decode_image(big_png(9000, 9000, bytes(9000)), MAX_PIXELS, WORK_SIZE)
    with pytest.raises(ImageTooLargeError) as second:
        decode_image(big_png(20000, 10000, bytes(20000)), MAX_PIXELS, WORK_SIZE)
    assert str(first.value) == ("image too large: 9000x9000 = 81,000,000 pixels exceeds "
                                f"the cap of {MAX_PIXELS:,} (possible decompression bomb)")
    assert str(second.value) == ("image too large: 200,000,000 pixels exceeds the cap of "
                                 f"{MAX_PIXELS:,} (possible decompression bomb)")


def test_the_entry_points_make_pillows_guard_agree(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """The command line sets Pillow's guard from Settings.max_pixels (importing does not:
    see test_importing_leaves_pillow_settings_alone), so a cap raised above Pillow's
    default lets such images through instead of Pillow refusing them."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored
    monkeypatch.setenv("ECHOIMAGE_MAX_PIXELS", "250000000")
    CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "none"), "index", "status"])
    assert Image.MAX_IMAGE_PIXELS == 250_000_000
    img = decode_image(big_png(20000, 10000, bytes(20000)), 250_000_000, WORK_SIZE)
    assert (img.width, img.height) == (20000, 10000)


def test_big_png_builder_is_a_real_png() -> None:
    row = (np.arange(3000) % 251).astype(np.uint8)
    with Image.open(io.BytesIO(big_png(3000, 2000, row.tobytes()))) as img:
        arr = np.asarray(img)
    assert arr.shape == (2000, 3000)
    assert (arr == row).all()


def test_pixel_cap_boundary() -> None:
    data = png(photo("coffee"))  # 600 x 400
    assert decode_image(data, 600 * 400, WORK_SIZE).width == 600
    with pytest.raises(DecodeError, match="too large"):
        decode_image(data, 600 * 400 - 1, WORK_SIZE)


def test_huge_image_under_the_cap_is_decoded() -> None:
    img = decode_image(_huge(), MAX_PIXELS, WORK_SIZE)
    assert (img.width, img.height) == (HUGE_W, HUGE_H)
    assert img.gray.shape == (round(HUGE_H * 512 / HUGE_W), 512)
    assert img.scale == pytest.approx(HUGE_W / 512)


def test_animated_gif_uses_first_frame() -> None:
    data = _animated()
    img = decode_image(data, MAX_PIXELS, WORK_SIZE)
    assert img.frames == 3
    with Image.open(io.BytesIO(data)) as gif:
        first = np.asarray(gif.convert("L"))
    np.testing.assert_array_equal(img.gray, first)


def test_16bit_png_scaled_to_8bit() -> None:
    cam = photo("camera")
    img = decode_image(png16(cam.astype(np.uint16) * 257), MAX_PIXELS, WORK_SIZE)
    assert np.abs(img.gray.astype(int) - cam).max() <= 1


def test_dark_16bit_png_keeps_its_range() -> None:
    cam16 = photo("camera").astype(np.uint16)  # 16-bit values 0..255: almost black
    img = decode_image(png16(cam16), MAX_PIXELS, WORK_SIZE)
    expected = np.round(cam16 / 257.0)
    assert np.abs(img.gray.astype(float) - expected).max() <= 1


def test_cmyk_jpeg() -> None:
    rgb = photo("coffee")
    data = cmyk_jpeg(rgb)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode_image(data, MAX_PIXELS, WORK_SIZE)
    assert (img.width, img.height) == (600, 400)
    # compare at full size: a working size that keeps every pixel
    full = decode_image(data, MAX_PIXELS, 600)
    assert np.abs(full.gray.astype(float) - to_gray(rgb)).mean() < 3


def test_rgba_flattened_on_white() -> None:
    rgba = _rgba_rocket()
    img = decode_image(png(rgba), MAX_PIXELS, 640)
    gray = to_gray(rgba[..., :3]).astype(float)
    assert (img.gray[40:, :48] == 255).all()  # transparent → white
    np.testing.assert_allclose(img.gray[40:, 48:], gray[40:, 48:], atol=1)  # opaque as is
    half = (gray[:40, 48:] * 128 + 255 * 127) / 255  # half transparent: blended with white
    np.testing.assert_allclose(img.gray[:40, 48:], half, atol=2)


def test_gray_alpha_png_flattened_on_white() -> None:
    cam = photo("camera")
    alpha = np.full(cam.shape, 255, np.uint8)
    alpha[100:200, 100:200] = 0
    img = decode_image(png(Image.fromarray(np.dstack([cam, alpha]), "LA")), MAX_PIXELS, WORK_SIZE)
    assert (img.gray[100:200, 100:200] == 255).all()
    np.testing.assert_array_equal(img.gray[300:], cam[300:])


def test_palette_png() -> None:
    pal = Image.fromarray(photo("clock")).convert("P", palette=Image.Palette.ADAPTIVE)
    img = decode_image(png(pal), MAX_PIXELS, WORK_SIZE)
    np.testing.assert_allclose(img.gray, np.asarray(pal.convert("L")), atol=1)


def test_palette_png_with_transparent_index() -> None:
    arr = np.zeros((64, 64), np.uint8)
    arr[:, 32:] = 1
    pal = Image.fromarray(arr, "P")
    pal.putpalette([0, 0, 0, 10, 10, 10] + [0] * 762)
    pal.info["transparency"] = 1  # palette index 1 is transparent
    img = decode_image(png(pal, transparency=1), MAX_PIXELS, WORK_SIZE)
    assert (img.gray[:, :32] == 0).all()
    assert (img.gray[:, 32:] == 255).all()


def test_grayscale_is_exact() -> None:
    cam = photo("camera")
    img = decode_image(png(cam), MAX_PIXELS, WORK_SIZE)
    assert img.format == "PNG" and img.frames == 1
    np.testing.assert_array_equal(img.gray, cam)


# EXIF orientation n: how the stored pixels are turned for display
_EXIF_DISPLAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),  # 90° clockwise
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),  # 90° anticlockwise
}


@pytest.mark.parametrize("orientation", sorted(_EXIF_DISPLAY))
def test_exif_orientation(orientation: int) -> None:
    stored = to_gray(photo("chelsea"))[:, :448]  # 448 x 300, a multiple of the JPEG block
    img = decode_image(exif_rotated_jpeg(stored, orientation, quality=100), MAX_PIXELS, WORK_SIZE)
    shown = _EXIF_DISPLAY[orientation](stored)
    assert img.gray.shape == shown.shape
    assert (img.width, img.height) == (shown.shape[1], shown.shape[0])
    diff = np.abs(img.gray.astype(float) - shown)
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 8
    if orientation != 1:  # the un-oriented pixels are clearly further away
        if stored.shape == shown.shape:
            assert np.abs(img.gray.astype(float) - stored).mean() > 10


@pytest.mark.parametrize("fmt", ["HEIC", "AVIF"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_heic_and_avif_exif_orientation(fmt: str, orientation: int) -> None:
    stored = to_gray(photo("chelsea"))[:300, :448]
    img = decode_image(exif_rotated(np.stack([stored] * 3, axis=2), orientation, fmt, 100),
                       MAX_PIXELS, WORK_SIZE)
    shown = _EXIF_DISPLAY[orientation](stored)
    assert img.format == ("HEIF" if fmt == "HEIC" else "AVIF")
    assert img.gray.shape == shown.shape
    assert (img.width, img.height) == (shown.shape[1], shown.shape[0])
    assert np.abs(img.gray.astype(float) - shown).mean() < 3
    if orientation != 1 and stored.shape == shown.shape:
        assert np.abs(img.gray.astype(float) - stored).mean() > 10


def _on_a_heic(*lines: str) -> subprocess.CompletedProcess[bytes]:
    """Run lines of Python in a new interpreter with a HEIC photo on its standard input."""
    return subprocess.run([sys.executable, "-c", "\n".join(lines)],
                          input=heic(photo("coffee")), capture_output=True, timeout=120)


def test_heic_plugin_is_registered_at_the_first_decode_only() -> None:
    proc = _on_a_heic("import sys",
                      "from PIL import Image",
                      "import echoimage.api, echoimage.features.decode as d",
                      "assert 'HEIF' not in Image.OPEN",
                      "d.decode_image(sys.stdin.buffer.read(), 64_000_000, 512)",
                      "assert 'HEIF' in Image.OPEN")
    assert proc.returncode == 0, proc.stderr.decode()


def test_heic_without_its_plugin_says_so() -> None:
    """Where pillow-heif is missing, a HEIC photo is refused in one line naming HEIC and what
    reads it (not "unsupported or corrupt AVIF data")."""
    proc = _on_a_heic("import sys",
                      "sys.modules['pillow_heif'] = None",
                      "from echoimage.features.decode import decode_image",
                      "try:",
                      "    decode_image(sys.stdin.buffer.read(), 64_000_000, 512)",
                      "except Exception as exc:",
                      "    print(type(exc).__name__, exc)")
    assert proc.stdout.decode().strip() == (
        "DecodeError HEIC images cannot be read: pillow-heif is not installed"), proc.stderr


def test_exif6_swaps_width_and_height() -> None:
    stored = photo("coffee")  # 600 wide, 400 high as stored
    img = decode_image(exif_rotated_jpeg(stored, 6), MAX_PIXELS, WORK_SIZE)
    assert (img.width, img.height) == (400, 600)
    assert img.gray.shape == (512, round(400 * 512 / 600))


def test_nearly_square_jpeg_keeps_width_and_height() -> None:
    arr = np.asarray(Image.fromarray(photo("astronaut")).resize((2048, 2047)))
    img = decode_image(jpeg(arr), MAX_PIXELS, WORK_SIZE)
    assert (img.width, img.height) == (2048, 2047)


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (300, 7)])
def test_too_small(shape: tuple[int, int]) -> None:
    with pytest.raises(DecodeError, match="too small") as info:
        decode_image(png(np.full(shape, 90, np.uint8)), MAX_PIXELS, WORK_SIZE)
    _one_line(str(info.value))


def test_smallest_accepted_image() -> None:
    img = decode_image(png(np.arange(64, dtype=np.uint8).reshape(8, 8)), MAX_PIXELS, WORK_SIZE)
    assert img.gray.shape == (8, 8)


def test_other_formats() -> None:
    chelsea = photo("chelsea")
    for fmt in ("WEBP", "BMP", "TIFF", "GIF"):
        img = decode_image(encode(chelsea, fmt), MAX_PIXELS, WORK_SIZE)
        assert img.format == fmt and (img.width, img.height) == (451, 300)


def test_bad_work_size() -> None:
    with pytest.raises(ValueError):
        decode_image(png(photo("camera")), MAX_PIXELS, 8)


# --- the index path ---------------------------------------------------------------------

@dataclass
class Mixed:
    settings: Settings
    root: Path
    rows: dict[str, dict]  # file name → image_info() of its store row
    failures: list[tuple[str, str, str]]
    entries: int


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Mixed:
    """Every case beside three good photos, indexed by one build_index run (which returns)."""
    root = tmp_path_factory.mktemp("mixed")
    for name in GOOD:
        write(root / f"good-{name}.png", png(photo(name)))
    for case in CASES:
        write(root / case.filename, case.make())
    settings = Settings(data_dir=tmp_path_factory.mktemp("mixed-data"), workers=2)
    summary = build_index(settings, [str(root)], progress=False)
    engine = open_store(settings)
    with session_factory(engine)() as session:
        known = repo.known_images(session)
        rows = {Path(url).name: repo.image_info(session, k.id) for url, k in known.items()}
    engine.dispose()
    return Mixed(settings, root, rows, summary.failures, summary.index_entries)


def test_index_path_run_completes(mixed: Mixed) -> None:
    assert len(mixed.rows) == len(GOOD) + len(CASES)
    for name in GOOD:
        assert mixed.rows[f"good-{name}.png"]["status"] == Status.INDEXED
    assert mixed.entries == len(GOOD) + len(VALID)
    assert sorted(Path(u).name for u, _, _ in mixed.failures) == sorted(_ids(FAILURES))


@pytest.mark.parametrize("case", FAILURES, ids=_ids(FAILURES))
def test_index_path_failure(mixed: Mixed, case: Case) -> None:
    row = mixed.rows[case.filename]
    assert row["status"] == case.status, row
    _one_line(row["reason"])
    assert case.reason in row["reason"]
    assert row["indexed_at"] is None


@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_index_path_valid(mixed: Mixed, case: Case) -> None:
    row = mixed.rows[case.filename]
    assert row["status"] == Status.INDEXED, row
    assert row["reason"] is None
    assert (row["width"], row["height"]) == case.size


# --- the query path ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def query_run(built, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[int, list[str], dict[str, dict]]:
    """One `query --json` over a good query, every case, and a good query again."""
    root = tmp_path_factory.mktemp("queries")
    good = write(root / "good-coffee.jpg", jpeg(photo("coffee"), 80))
    paths = [str(good)] + [str(write(root / c.filename, c.make())) for c in CASES] + [
        str(good)]
    result = CliRunner().invoke(cli, ["--data-dir", str(built.settings.data_dir), "query",
                                      "-k", "3", "--json", *paths])
    lines = result.output.splitlines()
    by_name = {Path(json.loads(line)["query"]).name: json.loads(line) for line in lines}
    assert [json.loads(line)["query"] for line in lines] == paths, result.output
    return result.exit_code, paths, by_name


def test_query_path_exit_code(built, query_run) -> None:
    code, _, by_name = query_run
    assert code == 1
    assert len(by_name) == len(CASES) + 1  # the good query is listed twice
    good = by_name["good-coffee.jpg"]
    assert good["results"][0]["url"] == built.catalogue.url("coffee")


def test_query_path_lines_in_input_order(built, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jpg", b"")
    good = write(tmp_path / "good.jpg", jpeg(photo("moon")))
    args = [str(good), str(bad), str(good)]
    result = CliRunner().invoke(cli, ["--data-dir", str(built.settings.data_dir), "query",
                                      "--json", *args])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [d["query"] for d in lines] == args
    assert set(lines[1]) == {"query", "error"}
    assert lines[0]["results"][0]["url"] == built.catalogue.url("moon") == \
        lines[2]["results"][0]["url"]


@pytest.mark.parametrize("case", FAILURES, ids=_ids(FAILURES))
def test_query_path_failure(query_run, case: Case) -> None:
    out = query_run[2][case.filename]
    assert set(out) == {"query", "error"}, out
    _one_line(out["error"])
    assert case.reason in out["error"]


@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_query_path_valid(built, query_run, case: Case) -> None:
    out = query_run[2][case.filename]
    assert "error" not in out, out
    assert out["results"], out
    if case.like is not None:
        top = out["results"][0]
        assert top["url"] == built.catalogue.url(case.like), out
        assert top["duplicate"] is True
    if case.filename.startswith("exif6"):
        # EXIF was applied: the decoded query is upright, no dihedral turn was needed
        assert out["results"][0]["orientation"] == "identity"


def test_byte_cap_on_both_paths(make_settings, built, tmp_path: Path) -> None:
    root = tmp_path / "capped"
    big = write(root / "big.jpg", jpeg(photo("astronaut"), 95))  # ~100 KB
    small = write(root / "small.jpg", jpeg(photo("camera")[::4, ::4], 80))  # a few KB
    cap = 20_000
    assert small.stat().st_size < cap < big.stat().st_size
    settings = make_settings(max_bytes=cap)
    summary = build_index(settings, [str(root)], progress=False)
    assert summary.counts == {"indexed": 1, Status.TOO_LARGE: 1}
    (url, status, reason), = summary.failures
    assert url == str(big.resolve()) and status == Status.TOO_LARGE
    _one_line(reason)
    assert "over the cap" in reason

    result = CliRunner().invoke(cli, ["--data-dir", str(built.settings.data_dir), "query",
                                      "--json", str(big), str(small)],
                                env={"ECHOIMAGE_MAX_BYTES": str(cap)})
    assert result.exit_code == 1
    first, second = (json.loads(line) for line in result.output.splitlines())
    assert set(first) == {"query", "error"} and "over the cap" in first["error"]
    assert second["results"][0]["url"] == built.catalogue.url("camera")


def test_pillow_plugin_errors_are_decode_errors() -> None:
    """Damaged files on which Pillow's plugins raise IndexError, struct.error or TypeError
    (found by the fuzzer): a DecodeError with a one-line reason like any corrupt file."""
    from fuzzing import seed_images

    seeds = seed_images()
    gif, tiff = seeds["animated-gif"], bytearray(seeds["tiff"])
    tiff[8] ^= 0xFF
    cases = [gif[:108266], gif[:107496], bytes(tiff)]
    for data in cases:
        with pytest.raises(DecodeError) as err:
            decode_image(data, MAX_PIXELS, WORK_SIZE)
        assert "\n" not in str(err.value) and str(err.value)


@pytest.mark.parametrize("line", ["~nosuchuser-xyz/a.jpg", "http://[bad/a.jpg"])
def test_odd_catalogue_lines_are_kept_as_written(line: str) -> None:
    """Lines that are neither a path nor a URL (found by the fuzzer) do not abort the
    catalogue: they are kept as written and refused per image when read."""
    from echoimage.catalogue.sources import parse_catalogue

    items = list(parse_catalogue(f"{line}\n/ok/b.jpg\n".encode(), "text", "t", "/base"))
    assert [it.url for it in items] == [line, "/ok/b.jpg"]


def test_a_list_with_a_nul_byte_is_binary_data() -> None:
    """A NUL byte (found by the fuzzer) makes the file binary data: refused in one line."""
    from echoimage.catalogue.sources import parse_catalogue
    from echoimage.errors import CatalogueError

    with pytest.raises(CatalogueError, match=r"^t: neither .* \(looks like binary data\)$"):
        list(parse_catalogue(b"a\x00b.jpg\n/ok/b.jpg\n", "text", "t", "/base"))
