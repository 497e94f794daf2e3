"""Test helpers: photos from scikit-image, transforms and encoders (arrays → image bytes).

Everything is generated in memory from the photos scikit-image ships; no test reads a file it
did not write itself and none reaches the network.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data
from aiohttp import web
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool
from support.pgserver import free_port  # noqa: F401 (the tests take it from here)

from echoimage.api import Catalogue
from echoimage.config import Settings
from echoimage.features.decode import decode_image
from echoimage.features.extract import extract_features
from echoimage.indexing.runs import BuildSummary
from echoimage.indexing.verify import VerifyReport
from echoimage.search.dedupe import DedupeResult
from echoimage.search.engine import SearchEngine
from echoimage.store.db import open_store
from echoimage.store.models import Status
from echoimage.types import ImageFeatures

#: the repository's root (subprocesses run the package from here)
REPO = Path(__file__).resolve().parents[1]

#: the photos the generated catalogue is made of (all ship with scikit-image, no download);
#: chosen to be mutually unrelated (skimage's `cat` is `chelsea`, so only one of them)
CATALOGUE_PHOTOS: tuple[str, ...] = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "coins", "moon",
    "page", "clock", "grass", "hubble_deep_field",
)


def extra_photos(*exclude: str) -> list[str]:
    """The catalogue photos except the named ones."""
    return [n for n in CATALOGUE_PHOTOS if n not in exclude]


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as uint8 (gray HxW or RGB HxWx3)."""
    arr = getattr(skimage.data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr.astype(np.uint8))


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Gray → RGB (RGB unchanged)."""
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def to_gray(arr: np.ndarray) -> np.ndarray:
    """RGB → uint8 gray with Pillow's (ITU-R 601-2) weights; gray unchanged."""
    if arr.ndim == 2:
        return arr
    return np.asarray(Image.fromarray(arr).convert("L"))


# --- encoders ---------------------------------------------------------------------------

def encode(arr: np.ndarray | Image.Image, fmt: str, **save_kwargs: object) -> bytes:
    """Encode an array (or a Pillow image) with Pillow: fmt is JPEG, PNG, WEBP, GIF, BMP…"""
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def jpeg(arr: np.ndarray, quality: int = 92, **kw: object) -> bytes:
    """JPEG bytes."""
    return encode(arr, "JPEG", quality=quality, **kw)


def png(arr: np.ndarray | Image.Image, **kw: object) -> bytes:
    """PNG bytes (lossless)."""
    return encode(arr, "PNG", **kw)


def webp(arr: np.ndarray, quality: int = 90) -> bytes:
    """WebP bytes."""
    return encode(arr, "WEBP", quality=quality)


def gif(arr: np.ndarray) -> bytes:
    """Single-frame GIF bytes (palette-quantised)."""
    return encode(Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def animated_gif(frames: list[np.ndarray], duration: int = 100) -> bytes:
    """Animated GIF bytes; frame 0 first."""
    imgs = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=duration,
                 loop=0, disposal=2)
    return buf.getvalue()


def png16(arr16: np.ndarray) -> bytes:
    """16-bit grayscale PNG bytes of a uint16 array."""
    img = Image.fromarray(arr16.astype(np.uint16))
    assert img.mode.startswith("I;16")
    return png(img)


def cmyk_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """A CMYK JPEG of an RGB array."""
    return encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=quality)


def exif_rotated_jpeg(stored: np.ndarray, orientation: int = 6, quality: int = 95) -> bytes:
    """JPEG whose pixels are `stored` and whose EXIF says Orientation=orientation."""
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=quality, exif=exif.tobytes())


def heic(arr: np.ndarray | Image.Image, quality: int = 90, **kw: object) -> bytes:
    """HEIC bytes (HEVC in HEIF, an iPhone's photo format), written by pillow-heif."""
    import pillow_heif

    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, format="HEIF", quality=quality, **kw)
    return buf.getvalue()


def avif(arr: np.ndarray | Image.Image, quality: int = 90, **kw: object) -> bytes:
    """AVIF bytes, written by Pillow."""
    return encode(arr, "AVIF", quality=quality, **kw)


def exif_rotated(stored: np.ndarray, orientation: int, fmt: str, quality: int = 95) -> bytes:
    """fmt ("HEIC" or "AVIF") bytes whose pixels are `stored` and whose EXIF says
    Orientation=orientation (pillow-heif writes it as the HEIF rotation too, as a phone does)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    write = heic if fmt == "HEIC" else avif
    return write(stored, quality=quality, exif=exif.tobytes())


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def deflate_repeated(chunk: bytes, times: int) -> bytes:
    """A valid zlib stream of `chunk * times`, made without compressing all of it.

    A full flush resets the compressor, so the deflate blocks of one chunk can be repeated;
    the Adler-32 trailer is computed over the whole (virtual) input.
    """
    comp = zlib.compressobj(9)
    head = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)[:-4]
    adler = 1
    for _ in range(times):
        adler = zlib.adler32(chunk, adler)
    return head + block * (times - 1) + tail + struct.pack(">I", adler)


def big_png(width: int, height: int, row: bytes | None = None) -> bytes:
    """A valid 8-bit grayscale PNG of width x height whose rows all equal `row` (default 0).

    Highly compressible: a 30000 x 30000 "decompression bomb" is under 1 MB on disk.
    """
    row = bytes(width) if row is None else row
    assert len(row) == width
    rows_per_chunk = max(1, (1 << 20) // (width + 1))
    while height % rows_per_chunk:
        rows_per_chunk -= 1
    chunk = (b"\x00" + row) * rows_per_chunk
    data = deflate_repeated(chunk, height // rows_per_chunk)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A decompression bomb: a valid PNG declaring width x height pixels, tiny on disk."""
    return big_png(width, height)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height but whose pixel data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


# --- transforms -------------------------------------------------------------------------

def mirror(arr: np.ndarray) -> np.ndarray:
    """Left-right mirror."""
    return np.ascontiguousarray(arr[:, ::-1])


def rot90(arr: np.ndarray, k: int = 1) -> np.ndarray:
    """k quarter turns anticlockwise."""
    return np.ascontiguousarray(np.rot90(arr, k))


def resize(arr: np.ndarray, factor: float) -> np.ndarray:
    """Resize by factor (Lanczos)."""
    img = Image.fromarray(arr)
    size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS))


def rotate(arr: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate by a small angle about the centre, same size, bicubic (corners filled black)."""
    return np.asarray(Image.fromarray(arr).rotate(degrees, resample=Image.Resampling.BICUBIC))


def crop(arr: np.ndarray, frac: float) -> np.ndarray:
    """Central crop keeping frac of each side."""
    h, w = arr.shape[:2]
    dh, dw = int(h * (1 - frac) / 2), int(w * (1 - frac) / 2)
    return np.ascontiguousarray(arr[dh:h - dh, dw:w - dw])


def tint(arr: np.ndarray, rgb: tuple[float, float, float] = (1.1, 0.95, 0.85)) -> np.ndarray:
    """Colour cast by per-channel gains (gray input becomes RGB)."""
    out = to_rgb(arr).astype(np.float32) * np.array(rgb, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def shrink(arr: np.ndarray, longest: int) -> np.ndarray:
    """Resize so the longest side is `longest` pixels."""
    h, w = arr.shape[:2]
    return resize(arr, longest / max(h, w))


def jpeg_roundtrip(arr: np.ndarray, quality: int = 50) -> np.ndarray:
    """The pixels after a JPEG encode/decode at the given quality."""
    return np.asarray(Image.open(io.BytesIO(jpeg(arr, quality))))


def web_page(arr: np.ndarray, seed: int, scale: float = 0.5, pale_top: float = 0.0
             ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A screenshot-like RGB page with the photo, shrunk by `scale`, somewhere in it, and
    the photo's box (x, y, width, height).

    The page has a navigation bar, paragraphs of text, outlined buttons and a caption
    right under the photo, all drawn with cv2 on a flat background. pale_top replaces that
    fraction of the photo's top rows with a flat band a little darker than the page (an
    overcast sky nearly the page's colour).
    """
    rng = np.random.default_rng(seed)
    pic = to_rgb(resize(arr, scale)).copy()
    ph, pw = pic.shape[:2]
    bg = int(rng.integers(236, 252))
    if pale_top:
        pic[: round(pale_top * ph)] = bg - 14
    h, w = round(ph * 2.2), round(pw * 2.4)
    page = np.full((h, w, 3), bg, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    bar = max(12, h // 14)
    page[:bar] = [int(v) for v in rng.integers(30, 120, 3)]
    cv2.putText(page, "catalogue  search  about", (8, bar * 3 // 4), font, bar / 40,
                (255, 255, 255), 1, cv2.LINE_AA)
    x0 = int(rng.integers(8, w - pw - 8))
    y0 = int(rng.integers(bar + 30, h - ph - 30))
    words = ("price", "delivery", "photo", "new", "reply", "shared", "in stock", "colour")
    for _ in range(14):  # paragraphs and buttons anywhere; the photo is pasted over them
        x, y = int(rng.integers(4, w - 60)), int(rng.integers(bar + 14, h - 4))
        if rng.random() < 0.3:
            cv2.rectangle(page, (x, y - 14), (x + 70, y + 6), (bg - 50,) * 3, 1)
        text = " ".join(str(rng.choice(words)) for _ in range(int(rng.integers(2, 6))))
        cv2.putText(page, text, (x, y), font, 0.45, (50, 50, 50), 1, cv2.LINE_AA)
    page[y0:y0 + ph, x0:x0 + pw] = pic
    cv2.putText(page, "caption: " + str(rng.choice(words)), (x0, y0 + ph + 13), font, 0.45,
                (90, 90, 90), 1, cv2.LINE_AA)
    return page, (x0, y0, pw, ph)


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def write(path: Path, data: bytes) -> Path:
    """Write bytes, creating parent folders; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def synthetic(seed: int, size: int = 300) -> np.ndarray:
    """A random but photo-like RGB image (the project's one procedural generator)."""
    from echoimage_bench.synthetic import synthetic_image

    bgr = synthetic_image(seed, seed=1, size=(size, size), colour=True)
    return np.ascontiguousarray(bgr[..., ::-1])


def store_url(data_dir: Path) -> str:
    """The store a CLI process started by a test uses: ECHOIMAGE_DATABASE_URL (a
    PostgreSQL database given to the test), else the data directory's SQLite file."""
    return os.environ.get("ECHOIMAGE_DATABASE_URL") or f"sqlite:///{data_dir / 'echoimage.sqlite3'}"


def indexed_count(url: str) -> int | None:
    """Indexed images in the store at url (SQLite: read-only); None while the store or
    its schema does not exist yet."""
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if not db.exists():
            return None
        engine = create_engine(f"sqlite:///file:{db}?mode=ro&uri=true",
                               connect_args={"timeout": 0.2})
    else:
        engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM images WHERE status = :s"),
                                    {"s": Status.INDEXED}).scalar() or 0)
    except (OperationalError, ProgrammingError):  # schema not created yet, or busy
        return None
    finally:
        engine.dispose()


@dataclass(frozen=True)
class StoreSnapshot:
    """What a test checks after a build: known URLs, status counts, state, ids, runs."""

    known: dict
    counts: dict
    state: object
    ids: np.ndarray
    runs: list


def store_snapshot(settings, runs: int = 10) -> StoreSnapshot:
    """Read the store of settings once, through the library, and close it."""
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            ids, _ = repo.indexed_hashes(s)
            return StoreSnapshot(repo.known_images(s), repo.status_counts(s),
                                 repo.store_state(s), ids, repo.recent_runs(s, limit=runs))
    finally:
        engine.dispose()


def interrupted_build(data_dir: Path, source: Path | str, total: int, timeout: float = 60.0,
                      sig: int = signal.SIGKILL) -> tuple[int, bool, Path]:
    """Start `echoimage index build SOURCE` in a subprocess, send its session sig (SIGKILL:
    the build and its workers die; SIGINT: Ctrl-C in a terminal) once a few batches but
    not all of its `total` images are indexed.

    Returns (images indexed when it died, whether it was killed before finishing, its
    stderr log).
    """
    env = {**os.environ, "ECHOIMAGE_BATCH_SIZE": "8"}  # commit often: a mid-run state exists
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir), "index", "build",
           str(source), "-q", "--workers", "2"]
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-build.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    db = store_url(data_dir)
    killed = False
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            n = indexed_count(db)
            # well before the end: the signal must not find a build that has just finished
            if n is not None and total // 6 <= n <= total // 2:
                os.killpg(proc.pid, sig)  # the build and its workers, nothing else
                killed = True
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert time.monotonic() < deadline, "the build neither progressed nor finished"
    if not killed:
        assert proc.returncode == 0, log.read_text()[-2000:]
    elif sig == signal.SIGINT:
        assert proc.returncode == 130, (proc.returncode, log.read_text()[-2000:])
    return indexed_count(db) or 0, killed, log


def bench_photo_folder(folder: Path) -> None:
    """12 distinct photos from scikit-image's bundled data: whole, cropped or tinted."""
    d = skimage.data
    coffee, rocket = d.coffee(), d.rocket()

    def gray(a: np.ndarray) -> np.ndarray:
        return np.stack([a] * 3, axis=-1)

    def tint(a: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
        return np.clip(a.astype(np.float32) * np.array(rgb), 0, 255).astype(np.uint8)

    images = {
        "astronaut": d.astronaut(), "chelsea": d.chelsea(),
        "coffee_left": coffee[:, :300], "coffee_right": tint(coffee[:, 300:], (0.8, 0.9, 1.2)),
        "rocket_left": rocket[:, :320], "rocket_right": rocket[:, 320:],
        "ihc": d.immunohistochemistry(), "hubble": d.hubble_deep_field()[:400, :600],
        "camera": gray(d.camera()), "coins": gray(d.coins()),
        "moon": tint(gray(d.moon()), (1.0, 0.85, 0.6)),
        "retina": cv2.resize(d.retina(), (480, 480), interpolation=cv2.INTER_AREA),
    }
    folder.mkdir()
    for name, rgb in images.items():
        cv2.imwrite(str(folder / f"{name}.jpg"), np.ascontiguousarray(rgb[..., ::-1]),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])


def faiss_threads_of(monkeypatch: Any, owner: object, name: str) -> list[int]:
    """Patch owner.name (a function) to record FAISS's OpenMP thread count of the calling
    thread at each call; the list of counts fills as it is called."""
    import faiss

    seen: list[int] = []
    real = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(faiss.omp_get_max_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def build_index(settings: Settings, sources: list[str], progress: bool = False,
                sample: bool = False) -> BuildSummary:
    """`index build` through the library's door (a Catalogue of settings, closed after)."""
    with Catalogue(settings) as catalogue:
        return catalogue.build(*sources, sample=sample, progress=progress)


def update_index(settings: Settings, progress: bool = False) -> BuildSummary:
    """`index update` through the library's door."""
    with Catalogue(settings) as catalogue:
        return catalogue.update(progress=progress)


def search_engine(settings: Settings, rebuild: bool = True) -> SearchEngine:
    """A SearchEngine on the store of settings, opened for reading as a query opens it."""
    return SearchEngine(settings, open_store(settings, create=False), rebuild=rebuild)


def verify_index(settings: Settings, repair: bool = True) -> VerifyReport:
    """`index verify` through the library's door."""
    with Catalogue(settings) as catalogue:
        return catalogue.verify(repair)


def find_duplicates(settings: Settings, crops: bool = False) -> DedupeResult:
    """`dedupe` through the library's door."""
    with Catalogue(settings) as catalogue:
        return catalogue.dedupe(crops)


#: the decoder's and the feature extractor's parameters as the indexer uses them (Settings)
_DEFAULTS = Settings()
MAX_PIXELS, WORK_SIZE = _DEFAULTS.max_pixels, _DEFAULTS.work_size
THUMB_SIZE, ORB_FEATURES = _DEFAULTS.thumb_size, _DEFAULTS.orb_features


def indexed_features(data: bytes, colour_size: int | None = None) -> ImageFeatures:
    """The features of image bytes as the indexer extracts them (Settings' parameters)."""
    img = decode_image(data, MAX_PIXELS, WORK_SIZE, colour_size)
    return extract_features(img, THUMB_SIZE, ORB_FEATURES)


class ServerThread:
    """An aiohttp app on 127.0.0.1:<free port>, in a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="http-test-server", daemon=True)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True,
                               shutdown_timeout=0.5)
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # reported to the starting thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def start(self) -> str:
        """Start serving; returns the base URL."""
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the test server did not start")
        if self.error is not None:
            raise RuntimeError("the test server did not start") from self.error
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the loop (in-flight handlers are cancelled) and wait for the thread."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        assert not self.thread.is_alive(), "the test server did not stop"


def run_on_pty(cmd: list[str]) -> tuple[str, str]:
    """Run cmd with its stderr on a terminal (a pty 100 columns wide) and its stdout on a
    pipe; returns (stdout, what the terminal showed). The command must succeed."""
    import fcntl
    import pty
    import termios

    leader, follower = pty.openpty()
    # a new pty has no size, and tqdm would draw in 0 columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower, cwd=REPO,
                          env=dict(os.environ)) as proc:
        os.close(follower)
        err = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the pty closed with the process
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert proc.wait(timeout=300) == 0, err.decode(errors="replace")
    os.close(leader)
    return out, err.decode(errors="replace")


@contextmanager
def serving(settings: Settings, web_settings: Any = None) -> Iterator[str]:
    """`echoimage serve`'s app on a free 127.0.0.1 port, in a thread; yields its URL."""
    import uvicorn

    from echoimage.web.app import create_app
    from echoimage.web.config import WebSettings

    port = free_port()
    app = create_app(settings, web_settings or WebSettings())
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
