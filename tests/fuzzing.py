"""A seeded byte mutator over real image and catalogue files, and the harness that feeds
EchoImage's readers with it: every input must give a result or a one-line domain error,
within a time limit. Used by tests/test_faults.py (bounded) and scripts/faults.py (longer).
"""

from __future__ import annotations

import json
import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from helpers import (
    animated_gif,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    gif,
    jpeg,
    photo,
    png,
    png16,
    webp,
)

from echoimage.catalogue.scrape import decode_html, parse_page
from echoimage.catalogue.sources import parse_catalogue
from echoimage.errors import EchoImageError
from echoimage.indexing.work import FeatureParams, WorkResult, process_bytes

#: one input taking longer than this has hung
HANG_S = 10.0


def seed_images() -> dict[str, bytes]:
    """Real, valid images of every kind the decoder handles."""
    coffee = photo("coffee")[::2, ::2]
    camera = photo("camera")[::2, ::2]
    return {
        "jpeg": jpeg(coffee, 85),
        "progressive-jpeg": jpeg(coffee, 80, progressive=True),
        "png": png(camera),
        "rgba-png": png(np.dstack([coffee, np.full(coffee.shape[:2], 128, np.uint8)])),
        "png16": png16(camera.astype(np.uint16) * 257),
        "gif": gif(coffee),
        "animated-gif": animated_gif([coffee, coffee[::-1], coffee[:, ::-1]]),
        "webp": webp(coffee),
        "cmyk-jpeg": cmyk_jpeg(coffee),
        "exif-jpeg": exif_rotated_jpeg(coffee, 6),
        "tiff": encode(camera, "TIFF"),
        "bmp": encode(camera, "BMP"),
    }


def seed_catalogues() -> dict[str, tuple[str, bytes]]:
    """Valid catalogue files of every kind (kind, bytes)."""
    entries = [{"url": f"https://shop.example/p/{i}.jpg", "sku": f"S{i}", "title": "x"}
               for i in range(6)]
    return {
        "json": ("json", json.dumps(entries).encode()),
        "json-dict": ("json", json.dumps({"images": entries}).encode()),
        "jsonl": ("jsonl", "\n".join(json.dumps(e) for e in entries).encode()),
        "csv": ("csv", ("url,sku\n" + "\n".join(f"{e['url']},{e['sku']}" for e in entries)
                        ).encode()),
        "text": ("text", ("# list\n" + "\n".join(e["url"] for e in entries)
                          + "\nrelative/a.jpg\n").encode()),
    }


SEED_HTML = (b"<html><head><base href='/shop/'><meta charset='utf-8'></head><body>"
             b"<img src='a.jpg' srcset='b.jpg 2x, c.jpg 640w'><picture><source "
             b"srcset='d.webp 1x'></picture><img data-src='//cdn.example/e.png'>"
             b"<a href='/next'>next</a></body></html>")


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to four random edits: bit flips, byte runs, cuts, repeats, inserts, a size
    field made huge, truncation."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if not buf:
            buf = bytearray(rng.integers(0, 256, 16, dtype=np.uint8).tobytes())
        n = len(buf)
        op = int(rng.integers(8))
        at = int(rng.integers(n))
        if op == 0:  # flip bits
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(n))
                buf[i] ^= 1 << int(rng.integers(8))
        elif op == 1:  # a run of one byte value
            length = int(rng.integers(1, 64))
            buf[at:at + length] = bytes([int(rng.choice([0, 255, rng.integers(256)]))]) * length
        elif op == 2:  # cut a chunk
            del buf[at:at + int(rng.integers(1, max(2, n // 8)))]
        elif op == 3:  # repeat a chunk
            chunk = buf[at:at + int(rng.integers(1, 256))]
            buf[at:at] = chunk * int(rng.integers(1, 4))
        elif op == 4:  # insert random bytes
            buf[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif op == 5:  # a 16- or 32-bit field made huge or zero (sizes, lengths, counts)
            if n >= at + 4:
                value = int(rng.choice([0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65500]))
                fmt = rng.choice([">H", "<H", ">I", "<I"])
                packed = struct.pack(str(fmt), value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
                buf[at:at + len(packed)] = packed
        elif op == 6:  # truncate
            del buf[max(1, at):]
        else:  # the header of one format on the body of another
            buf[:8] = bytes(rng.choice([b"\xff\xd8\xff\xe0\x00\x10JF", b"\x89PNG\r\n\x1a\n",
                                        b"GIF89a\x01\x00", b"RIFF\x00\x00\x00\x00"]))
    return bytes(buf)


class Hang(Exception):
    """An input took longer than HANG_S."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hang in this (main) thread after seconds."""
    def _alarm(*_: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class FuzzTally:
    """Inputs tried, and the crashes (unexpected exceptions) and hangs among them."""

    tried: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    bad_reasons: list[str] = field(default_factory=list)  # empty or multi-line reasons
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"tried": self.tried, "accepted": self.accepted, "refused": self.refused,
                "crashes": len(self.crashes), "hangs": len(self.hangs),
                "bad_reasons": len(self.bad_reasons), "seconds": round(self.seconds, 1),
                "examples": (self.crashes + self.hangs + self.bad_reasons)[:5]}


def _check_reason(tally: FuzzTally, label: str, reason: str | None) -> None:
    if not reason or "\n" in reason.strip():
        tally.bad_reasons.append(f"{label}: {reason!r}")


def fuzz(tally: FuzzTally, label: str, seeds: list[bytes], rng: np.random.Generator,
         n: int, run: Callable[[bytes], str | None]) -> None:
    """Feed n mutations of the seeds to run(), which returns None (accepted) or a one-line
    reason (refused); anything else it raises is a crash."""
    t0 = time.perf_counter()
    for i in range(n):
        data = mutate(seeds[i % len(seeds)], rng)
        tally.tried += 1
        try:
            with time_limit(HANG_S):
                reason = run(data)
        except Hang:
            tally.hangs.append(f"{label} #{i}")
            continue
        except Exception as exc:  # noqa: BLE001 - that is what is counted
            tally.crashes.append(f"{label} #{i}: {type(exc).__name__}: {exc}"[:300])
            continue
        if reason is None:
            tally.accepted += 1
        else:
            tally.refused += 1
            _check_reason(tally, f"{label} #{i}", reason)
    tally.seconds += time.perf_counter() - t0


PARAMS = FeatureParams(64_000_000, 512, 256, 500, 90, 192, 70)


def run_indexer(data: bytes) -> str | None:
    """The indexer's path for one image's bytes (decode + features + encoding)."""
    res: WorkResult = process_bytes(1, data, PARAMS)
    if res.record is not None:
        return None
    if (res.reason or "").startswith("feature extraction failed"):
        # the worker's last resort caught it: an exception the decoder should have named
        raise AssertionError(res.reason)
    return res.reason


def query_runner(engine: object) -> Callable[[bytes], str | None]:
    """The query path for one image's bytes."""
    def run(data: bytes) -> str | None:
        try:
            engine.query_bytes(data, 3)  # type: ignore[attr-defined]
        except EchoImageError as exc:
            return str(exc)
        return None

    return run


def catalogue_runner(kind: str) -> Callable[[bytes], str | None]:
    """The catalogue reader for one kind of file."""
    def run(data: bytes) -> str | None:
        try:
            items = list(parse_catalogue(data, kind, "fuzz", "/base"))
        except EchoImageError as exc:
            return str(exc)
        assert all(isinstance(it.url, str) and it.url for it in items)
        return None

    return run


def run_page(data: bytes) -> str | None:
    """The scraper's page parser."""
    parse_page(decode_html(data, "text/html"), "https://shop.example/shop/")
    return None
