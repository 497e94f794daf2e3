"""Padding derived from real rows: a store grown to a large scale in minutes.

Each padding row is made from the real catalogue rows of the same store. Its descriptors
are the stored descriptors of photos: each one a random keypoint's of a random real row,
with 1/8 of its bits flipped (32 on average). They are distributed as photos' descriptors
are, so the IVF lists a photo's keypoints fall into are as full as those the entries sit in
(`scale.list_crowding`); with every row's descriptors made from one photo's by flipping 3/8
of their bits, as before, they were spread like noise, the quantizer gave the photos' part
of the space few lists, and a photo query's first votes scanned lists 4.7 times the mean at
100,000 entries, against 1.2 times for an entry and 1.4 times among photos alone. A row's
descriptors come from many different photos, so a copy of one of them gives a row a stray
vote at most, and two padding copies of one descriptor differ in 56 bits on average (each
is 32 from the original, within the vote radius of 48 bits). Its keypoints are one
photo's, jittered; its thumbnail that photo's, shifted circularly and mirrored or turned
and lit by a smooth random field (photo texture that matches no query, even for the
siblings of a flat source), and the pHash and dHash of that thumbnail (random hashes
beside real thumbnails made pairs that matched on the thumbnail alone). Rows are encoded
as real rows are (store/codec.py), written in bulk through the store's tables with change
numbers like any change, and belong to no source (`index update` leaves them alone).
Procedural images (`padding.synthetic_image`) go through the real decoder and feature
code but cost ~8 ms of CPU each; derived rows cost ~1 ms.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from sqlalchemy import Engine, select

from echoimage.store import repo
from echoimage.store.codec import decode_orb, decode_thumbnail
from echoimage.store.models import FeatureRow, ImageRow, Status

#: URL prefix of derived padding rows
DERIVED_PREFIX = "synthetic://derived/"


@dataclass(frozen=True)
class _Source:
    """A real row padding rows are derived from (decoded once)."""

    thumb: np.ndarray
    keypoints: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int
    work_scale: float
    params: str | None


@dataclass(frozen=True)
class _Sources:
    """The real rows padding is derived from, and all their descriptors in one array."""

    rows: list[_Source]
    descriptors: np.ndarray


def _sources(engine: Engine, limit: int) -> _Sources:
    from echoimage.store.db import session_factory

    with session_factory(engine)() as s:
        rows = s.execute(
            select(FeatureRow.thumbnail, FeatureRow.keypoints, FeatureRow.descriptors,
                   ImageRow.width, ImageRow.height, FeatureRow.work_scale, FeatureRow.params)
            .join(ImageRow, ImageRow.id == FeatureRow.image_id)
            .where(ImageRow.status == Status.INDEXED, ~ImageRow.url.startswith(DERIVED_PREFIX))
            .order_by(ImageRow.id).limit(limit)).all()
    out = []
    for thumb, kp, desc, w, h, scale, params in rows:
        orb = decode_orb(kp, desc)
        out.append(_Source(decode_thumbnail(thumb), orb.keypoints, orb.descriptors,
                           int(w or 256), int(h or 256), float(scale), params))
    if not out:
        raise ValueError("the store has no indexed image to derive padding from")
    return _Sources(out, np.ascontiguousarray(np.concatenate([s.descriptors for s in out])))


def derive_row(src: _Source, rng: np.random.Generator, descriptors: np.ndarray
               ) -> dict[str, Any]:
    """One padding row's feature columns, derived from src (keypoints, thumbnail) and from
    random rows of `descriptors` (the sources' stored descriptors), encoded as the store
    keeps real rows (store/codec.py); its pHash and dHash are those of its own
    thumbnail."""
    from echoimage.features.hashes import dhash, hash_input, phash
    from echoimage.store.codec import encode_orb, encode_thumbnail
    from echoimage.types import OrbFeatures

    shape = src.descriptors.shape
    mask = rng.integers(0, 256, shape, dtype=np.uint8)  # p(bit) = 1/8
    mask &= rng.integers(0, 256, shape, dtype=np.uint8)
    mask &= rng.integers(0, 256, shape, dtype=np.uint8)
    desc = descriptors[rng.integers(0, len(descriptors), shape[0])] ^ mask
    kp = src.keypoints[:, :2].copy()
    kp += rng.normal(0, 1.5, kp.shape).astype(np.float32)
    thumb = np.roll(src.thumb, (int(rng.integers(1, 255)), int(rng.integers(1, 255))),
                    axis=(0, 1))
    thumb = np.rot90(thumb, int(rng.integers(1, 4)))[:, ::-1].astype(np.float32)
    # lit by a random field of the pHash's own scale (8×8 cells): siblings of one flat
    # source (a sky) differ, and the hashes spread like unrelated photos' (a 4×4 field
    # smoother than that set the pHash alone and made siblings collide)
    field = cv2.resize(rng.uniform(-40, 40, (8, 8)).astype(np.float32), thumb.shape[::-1],
                       interpolation=cv2.INTER_CUBIC)
    thumb = np.ascontiguousarray(np.clip(thumb + field, 0, 255).astype(np.uint8))
    small = hash_input(thumb)
    kp_bytes, desc_bytes = encode_orb(OrbFeatures(np.clip(kp, 0, None), desc))
    return {"phash": phash(small), "dhash": dhash(small),
            "thumbnail": encode_thumbnail(thumb), "thumb_size": thumb.shape[0],
            "n_keypoints": len(kp), "keypoints": kp_bytes, "descriptors": desc_bytes,
            "work_scale": src.work_scale, "params": src.params}


def _derive_batch(sources: _Sources, lo: int, hi: int, seed: int
                  ) -> list[tuple[int, int, dict[str, Any]]]:
    """Padding rows lo..hi-1: (width, height, feature columns) each; the same rows
    whichever process derives them."""
    rng = np.random.default_rng([seed, lo])
    out = []
    for _ in range(lo, hi):
        src = sources.rows[int(rng.integers(len(sources.rows)))]
        out.append((src.width, src.height, derive_row(src, rng, sources.descriptors)))
    return out


_WORKER_SOURCES: list[_Sources] = []


def _worker_init(url: str, limit: int) -> None:
    from sqlalchemy import create_engine

    cv2.setNumThreads(1)
    engine = create_engine(url)
    try:
        _WORKER_SOURCES[:] = [_sources(engine, limit)]
    finally:
        engine.dispose()


def _worker_batch(args: tuple[int, int, int]) -> list[tuple[int, int, dict[str, Any]]]:
    return _derive_batch(_WORKER_SOURCES[0], *args)


def add_derived_rows(engine: Engine, start: int, count: int, seed: int = 0,
                     batch: int = 1000, progress: Any = None, workers: int = 1,
                     sources: int = 2000) -> float:
    """Insert `count` derived padding rows numbered from `start` (indexed, no source), in
    transactions of `batch`, derived by `workers` processes (1: this one) while this one
    writes; returns the seconds it took. The rows do not depend on `workers`."""
    import multiprocessing

    from echoimage.store.db import session_factory

    t0 = time.perf_counter()
    blocks = [(lo, min(start + count, lo + batch), seed)
              for lo in range(start, start + count, batch)]
    pool = None
    if workers > 1 and len(blocks) > 1:
        pool = multiprocessing.get_context("forkserver").Pool(
            workers, initializer=_worker_init,
            initargs=(engine.url.render_as_string(hide_password=False), sources))
        derived = pool.imap(_worker_batch, blocks)
    else:
        local = _sources(engine, sources)
        derived = (_derive_batch(local, *b) for b in blocks)
    sessions = session_factory(engine)
    images, features = ImageRow.__table__, FeatureRow.__table__
    try:
        for (lo, hi, _), made in zip(blocks, derived, strict=True):
            with sessions.begin() as s:
                first = repo.next_seq(s, hi - lo)
                ts = repo.now()
                rows = [{"url": f"{DERIVED_PREFIX}{i}", "source_id": None,
                         "status": Status.INDEXED, "sha256": hashlib.sha256(
                             f"{seed}-{i}".encode()).hexdigest(),
                         "width": w, "height": h, "format": "DERIVED",
                         "nbytes": 0, "attempts": 1, "created_at": ts, "updated_at": ts,
                         "indexed_at": ts, "seq": first + n}
                        for n, (i, (w, h, _)) in enumerate(zip(range(lo, hi), made,
                                                               strict=True))]
                s.execute(images.insert(), rows)
                ids = dict(s.execute(select(ImageRow.url, ImageRow.id).where(
                    ImageRow.url.in_([r["url"] for r in rows]))).all())
                feats = [{"image_id": ids[r["url"]], **cols}
                         for r, (_, _, cols) in zip(rows, made, strict=True)]
                s.execute(features.insert(), feats)
            if progress is not None:
                progress(hi - start)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return time.perf_counter() - t0
