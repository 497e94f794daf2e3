"""Padding a store to a larger scale with entries derived from its photos' rows
(`bench.derived`), cached between runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from echoimage_bench.context import Log, RunContext
from echoimage_bench.memory import ProcessTreePeak, self_peak_rss_mb
from echoimage_bench.synthetic import PAD_SIZE, synthetic_image

#: bump when `synthetic_image` or the padding rows change: invalidates cached padding
PAD_VERSION = 5


def _pad_features(args: tuple[int, int, Any]) -> tuple:
    """Worker: synthetic image → BMP bytes → decode_image → extract_features."""
    from echoimage.features.decode import decode_image
    from echoimage.features.extract import extract_features

    index, seed, params = args
    max_pixels, work_size = params.max_pixels, params.work_size
    thumb_size, nfeatures = params.thumb_size, params.orb_features
    t0 = time.process_time()
    ok, buf = cv2.imencode(".bmp", synthetic_image(index, seed))
    if not ok:
        raise RuntimeError("BMP encoding failed")
    data = buf.tobytes()
    feats = extract_features(decode_image(data, max_pixels, work_size), thumb_size, nfeatures)
    return index, hashlib.sha256(data).hexdigest(), len(data), feats, time.process_time() - t0


def copy_sqlite(src: Path, dst: Path) -> None:
    """Consistent copy of a SQLite database (WAL included) with the backup API."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    with closing(sqlite3.connect(src)) as s, closing(sqlite3.connect(dst)) as d:
        s.backup(d)


@dataclass(frozen=True)
class PaddingJob:
    """What `build_padding` needs (picklable: it runs in its own process)."""

    base_db: Path  # the catalogue store's SQLite file
    pad_root: Path  # one data dir per scale below it: scale-N/
    scales: tuple[int, ...]
    key: str  # fingerprint of catalogue + feature parameters; a cached scale must match
    catalogue_entries: int
    seed: int
    settings: dict[str, Any]  # Settings fields (model_dump)
    workers: int
    progress: bool = True


def padding_key(catalogue_digest: str, probe_digest: str, feature_params: Sequence[int],
                seed: int) -> str:
    """Fingerprint of a padded store: what its rows were made from.

    The catalogue digest covers the catalogue rows copied into it, the probe digest the
    features the current code extracts from synthetic images; either changes when feature
    code changes. The schema revision is not part of it: `open_store` migrates a cached
    copy like any other store (and the engine rebuilds indexes it finds stale).
    """
    h = hashlib.sha256()
    h.update(json.dumps({"pad_version": PAD_VERSION, "seed": seed, "size": PAD_SIZE,
                         "features": list(feature_params), "catalogue": catalogue_digest,
                         "probe": probe_digest}).encode())
    return h.hexdigest()


def features_digest(feats: Iterable[Any]) -> str:
    """Digest of feature sets (thumbnail, ORB keypoints and descriptors, pHash if any)."""
    h = hashlib.sha256()
    for f in feats:
        for part in (f.thumbnail, f.orb.keypoints, f.orb.descriptors):
            h.update(np.ascontiguousarray(part).tobytes())
        h.update(getattr(f, "phash", b"") or b"")
    return h.hexdigest()


def _probe_digest(settings: Any, seed: int) -> str:
    """Features the current code extracts from the first synthetic padding images."""
    from echoimage.indexing.work import FeatureParams

    params = FeatureParams.from_settings(settings)
    return features_digest(_pad_features((i, seed, params))[3] for i in range(2))


def _catalogue_digest(settings: Any) -> str:
    """URLs and stored features of every indexed catalogue image, by id."""
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(settings)
    try:
        with session_factory(engine)() as session:
            ids, _ = repo.indexed_hashes(session)
            cands = repo.candidates(session, [int(i) for i in ids])
    finally:
        engine.dispose()
    ordered = [cands[int(i)] for i in ids if int(i) in cands]
    urls = hashlib.sha256("\0".join(c.url for c in ordered).encode()).hexdigest()
    return urls + features_digest(ordered)


def read_padding_meta(scale_dir: Path) -> dict[str, Any] | None:
    """The pad.json of a padded data dir, or None."""
    try:
        return json.loads((scale_dir / "pad.json").read_text())
    except (OSError, ValueError):
        return None


def padding_cached(job: PaddingJob, scale: int) -> bool:
    """True when pad_root/scale-N holds a complete padded store for this job's key."""
    d = job.pad_root / f"scale-{scale}"
    meta = read_padding_meta(d)
    return bool(meta and meta.get("key") == job.key and meta.get("complete")
                and meta.get("settled", True) and (d / "echoimage.sqlite3").exists())


def build_padding(job: PaddingJob) -> dict[int, dict[str, Any]]:
    """Pad copies of the catalogue store to each scale with derived entries.

    Each scale gets a data dir (SQLite store + both shortlist indexes) under
    ``job.pad_root/scale-N``. Entries are derived from the catalogue's own rows
    (`bench.derived`: perturbed descriptors, re-lit thumbnails, their own hashes), made by
    `job.workers` processes and written 1000 per transaction; then `rebuild_index_files`.
    A larger scale starts from a copy of the next smaller one (derived entry i is the same
    at every scale). Complete scales are recorded in ``pad.json`` and reused by later runs
    with the same key.
    """
    from echoimage.config import Settings
    from echoimage.index.build import rebuild_index_files
    from echoimage.store import repo
    from echoimage.store.db import head_revision, open_store, session_factory
    from echoimage_bench.derived import add_derived_rows

    log = Log(job.progress, "bench pad")
    base = Settings(**job.settings)
    info: dict[int, dict[str, Any]] = {}
    prev: tuple[Path, int] | None = None  # (db, padding rows) of the last complete scale
    for scale in sorted(job.scales):
        d = job.pad_root / f"scale-{scale}"
        db = d / "echoimage.sqlite3"
        target = scale - job.catalogue_entries
        if target <= 0:
            continue
        if padding_cached(job, scale):
            meta = read_padding_meta(d) or {}
            log(f"{scale:,}: cached in {d}")
            info[scale] = {**meta, "cached": True}
            prev = (db, target)
            continue
        t0 = time.perf_counter()
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        src, start = prev if prev else (job.base_db, 0)
        copy_sqlite(src, db)
        t_copy = time.perf_counter() - t0
        settings = base.model_copy(update={"data_dir": d})
        engine = open_store(settings)
        log(f"{scale:,}: {target - start:,} derived entries ({start:,} copied from "
            f"{src.parent.name}), {job.workers} workers")
        tick = log.loop(f"padding {scale:,}", target - start)
        with ProcessTreePeak() as peak:
            add_derived_rows(engine, start, target - start, seed=job.seed,
                             workers=job.workers, progress=tick)
        t_rows = time.perf_counter()
        with session_factory(engine)() as session:
            count = repo.store_state(session).count
        report = rebuild_index_files(settings, engine, "padded store")
        engine.dispose()
        t_end = time.perf_counter()
        generated = max(1, target - start)
        meta = {
            "key": job.key, "complete": True, "scale": scale, "entries": count,
            "schema_revision": head_revision(),
            "catalogue_entries": job.catalogue_entries, "padding_entries": target,
            "generated_this_build": target - start,
            "seconds": round(t_end - t0, 2), "copy_seconds": round(t_copy, 2),
            "rows_seconds": round(t_rows - t0 - t_copy, 2),
            "index_rebuild_seconds": round(t_end - t_rows, 2),
            "index_entries": report.images,
            "ms_per_padding_image": round(1000 * (t_rows - t0 - t_copy) / generated, 3),
            "workers": job.workers,
            "memory": {"inserter_peak_rss_mb": self_peak_rss_mb(), **peak.as_dict()},
            "store_file_bytes": sum(p.stat().st_size for p in d.glob("echoimage*")),
            "synthetic": "rows derived from the catalogue's photos (bench.derived): "
                         "descriptors with 3/8 of their bits flipped, thumbnails shifted, "
                         "turned and re-lit, their own hashes; not photos",
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (d / "pad.json").write_text(json.dumps(meta, indent=2))
        info[scale] = {**meta, "cached": False}
        log(f"{scale:,} done: {count:,} entries in {t_end - t0:.0f}s (rows "
            f"{meta['rows_seconds']:.0f}s, index {meta['index_rebuild_seconds']:.0f}s)")
        prev = (db, target)
    return info


def padding_process(job: PaddingJob) -> None:
    """Entry point of the background padding process."""
    import signal

    # terminate() from the parent: unwind, so the pool's workers are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cv2.setNumThreads(1)
    build_padding(job)


def padding_job(ctx: RunContext, out_dir: Path, scales: Sequence[int], workers: int | None,
                 progress: bool) -> PaddingJob:
    """The padding job of this run: where the padded stores go and what they are made from."""
    from echoimage.indexing.work import FeatureParams

    key = padding_key(_catalogue_digest(ctx.settings), _probe_digest(ctx.settings, ctx.seed),
                      dataclasses.astuple(FeatureParams.from_settings(ctx.settings)), ctx.seed)
    return PaddingJob(
        base_db=ctx.settings.data_dir / "echoimage.sqlite3", pad_root=out_dir / "pad",
        scales=tuple(sorted(s for s in scales if s > len(ctx.url_ids))),
        key=key,
        catalogue_entries=len(ctx.url_ids), seed=ctx.seed,
        settings=ctx.settings.model_dump(), workers=workers or os.cpu_count() or 1,
        progress=progress)
